"""The model menu an MLClient door offers the node: which models, in which order, in what bytes.

The node reads the info reply (the model list) with a **single** ``recv`` and parses whatever
that call returned. On a studio network a TCP segment carries about 1,448 bytes; a longer reply
may arrive in two pieces, and the node then sees ``num_models`` models announced but fewer
parsed, and indexes models that are not there. So a menu is built to fit a byte budget
(:data:`SEGMENT_BYTES` by default, header included)::

    menu = build_menu(engine.models(), patterns=("segment", "person_*"), budget=SEGMENT_BYTES)
    conn.sendall(menu.reply)         # header and body, one write
    menu.left_out                     # matched, but past the budget: the TD is warned

**What is listed.** The newest version of each model whose id matches one of the door's
patterns (ids or shell-style globs, ``fnmatch``), that the node can run: its outputs are the
size of its inputs (an upscaler's are not; it stays on HTTP and ``frameserve run``). In pattern
order: the models the first pattern matches, then the second's, and so on; among the models one
pattern matches, the TD's own (model folders, packages, trained jobs) come first, then the
built-ins in :data:`BUILTIN_ORDER`, then by id. The first model is the one a new node shows.

**Compact encoding.** Each model carries only what the node reads: its ``name``, ``label``,
``inputs`` (name and channels) and one option per knob with its default. ``outputs`` and
``mc_options`` are left out: the node never reads them (a choice knob travels as a string
option, whose value the server checks against the choices).

**The budget.** Models are added in order while the whole reply fits; the first one that does
not fit, and every one after it, is left out (so the menu is always a prefix of the order, and
a new model never reshuffles it). A TD on a network with jumbo frames may raise the budget.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from frameserve.catalogue.entries import ModelEntry
from frameserve.plugin.model import ModelSpec
from frameserve.serve.mlclient import messages as pb
from frameserve.serve.mlclient.framing import reply_header

__all__ = [
    "BUILTIN_ORDER",
    "SEGMENT_BYTES",
    "Menu",
    "build_menu",
    "menu_model",
    "node_can_run",
    "patterns_match",
]

#: What one TCP segment carries on an Ethernet network (MTU 1500, TCP timestamps on): the most
#: an info reply, header included, may take so that the node's single ``recv`` gets it whole.
SEGMENT_BYTES = 1448

#: The built-ins in the order a node's menu lists them: quick and common first (the first model
#: is what a new node runs), the ones that need the TD's own weights last.
BUILTIN_ORDER = (
    "blur",
    "denoise",
    "deblur",
    "person_matte",
    "segment",
    "cutout",
    "instances",
    "face_detect",
    "pose",
    "body_parts",
    "motion_vectors",
    "motion_vectors_learned",
    "retime",
    "difference",
    "identity",
    "upscale_detail",
)


@dataclass(frozen=True)
class Menu:
    """An info reply ready to send, and what it lists and leaves out.

    Attributes:
        reply: the framed reply (12-byte header and body), to send in one write.
        listed: model ids in menu order.
        left_out: ids that matched and that the node could run, but that did not fit.
        unfit: ids that matched but whose outputs are not the size of their inputs.
        wanted_bytes: what the reply would take with every model it left out.
    """

    reply: bytes
    listed: tuple[str, ...]
    left_out: tuple[str, ...]
    unfit: tuple[str, ...]
    wanted_bytes: int


def node_can_run(spec: ModelSpec) -> bool:
    """Whether the MLClient node can take the model's outputs (the size of its inputs)."""
    return spec.output_scale == 1


def patterns_match(model_id: str, patterns: Sequence[str]) -> bool:
    """Whether ``model_id`` matches one of ``patterns`` (ids or ``fnmatch`` globs)."""
    return any(fnmatch.fnmatchcase(model_id, pattern) for pattern in patterns)


def menu_model(spec: ModelSpec, *, label: str) -> Any:
    """Return the compact ``Model`` message the node's menu needs for ``spec``."""
    message = pb.Model(name=spec.id, label=label)
    for image in spec.inputs:
        message.inputs.add(name=image.name, channels=image.channels)
    for knob in spec.knobs:
        getattr(message, f"{knob.wire_kind}_options").add(name=knob.name, values=[knob.default])
    return message


def build_menu(
    available: Sequence[ModelEntry], *, patterns: Sequence[str], budget: int = SEGMENT_BYTES
) -> Menu:
    """Return the menu of the models in ``available`` that ``patterns`` choose, within ``budget``.

    ``available`` is every loaded version, oldest first (one registry snapshot); the newest
    version of each model is listed, its label naming the version unless it is the only
    version, ``"1"`` (``"Gaussian Blur (v2)"``).
    """
    ordered, unfit = _choose(available, patterns)
    messages = [menu_model(entry.spec, label=label) for entry, label in ordered]
    listed = len(messages)
    while listed and len(_reply(messages[:listed])) > budget:
        listed -= 1
    return Menu(
        reply=_reply(messages[:listed]),
        listed=tuple(entry.id for entry, _ in ordered[:listed]),
        left_out=tuple(entry.id for entry, _ in ordered[listed:]),
        unfit=tuple(unfit),
        wanted_bytes=len(_reply(messages)),
    )


def _choose(
    available: Sequence[ModelEntry], patterns: Sequence[str]
) -> tuple[list[tuple[ModelEntry, str]], list[str]]:
    """The newest versions the patterns choose, in menu order, and those the node cannot run."""
    versions: dict[str, list[ModelEntry]] = {}
    for entry in available:
        versions.setdefault(entry.id, []).append(entry)
    placed: set[str] = set()
    ordered: list[tuple[ModelEntry, str]] = []
    unfit: list[str] = []
    for pattern in patterns:
        matched = [
            entries
            for model_id, entries in versions.items()
            if model_id not in placed and fnmatch.fnmatchcase(model_id, pattern)
        ]
        for entries in sorted(matched, key=lambda e: _rank(e[-1])):
            newest = entries[-1]
            placed.add(newest.id)
            if not node_can_run(newest.spec):
                unfit.append(newest.id)
                continue
            label = newest.spec.label
            if len(entries) > 1 or newest.version != "1":
                label = f"{label} (v{newest.version})"
            ordered.append((newest, label))
    return ordered, unfit


def _rank(entry: ModelEntry) -> tuple[int, int, str]:
    if not entry.builtin:
        return (0, 0, entry.id)
    if entry.id in BUILTIN_ORDER:
        return (1, BUILTIN_ORDER.index(entry.id), entry.id)
    return (1, len(BUILTIN_ORDER), entry.id)


def _reply(models: Sequence[Any]) -> bytes:
    reply = pb.RespondWrapper(info=True, r1=pb.RespondInfo(num_models=len(models)))
    reply.r1.models.extend(models)
    body: bytes = reply.SerializeToString()
    return reply_header(len(body)) + body
