"""The README's model example works as written: it loads, lists and runs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from frameserve.builtin_models.blur.model import gaussian_blur
from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.request import build_request
from frameserve.engine.runner import Runner
from frameserve.serve.server import FrameServer
from tests.support.paths import REPO

README = REPO / "README.md"
EXAMPLE = re.compile(r"<!-- README-EXAMPLE: (?P<path>\S+) -->\n```python\n(?P<code>.*?)```", re.S)


def readme_examples() -> dict[str, str]:
    """Return the README's marked code blocks by the file path they say they belong in."""
    return {m["path"]: m["code"] for m in EXAMPLE.finditer(README.read_text())}


def test_readme_model_example_loads_and_sharpens(tmp_path: Path) -> None:
    examples = readme_examples()
    assert "studio_models/sharpen/model.py" in examples
    for relative, code in examples.items():
        target = tmp_path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(code)

    registry = ModelRegistry([tmp_path / "studio_models"])
    entry = registry.get("sharpen")
    assert entry.spec is not None and entry.spec.label == "Sharpen"
    assert [k.name for k in entry.spec.knobs] == ["amount"]

    image = torch.rand(3, 16, 20)
    request = build_request(entry.spec, [image], {"amount": 2.0})
    result = Runner(registry).run(request).frames["image"]

    box = torch.full((3, 1, 3, 3), 1 / 9)
    soft = F.conv2d(F.pad(image[None], (1, 1, 1, 1), mode="replicate"), box, groups=3)[0]
    assert torch.allclose(result, image + 2.0 * (image - soft), atol=1e-6)
    assert result.std() > image.std()  # sharper: more contrast between neighbours


def run_example(name: str, server: FrameServer, namespace: dict[str, object]) -> dict[str, object]:
    """Run a README example against ``server`` instead of the default address."""
    host, port = server.http_address
    code = readme_examples()[name].replace("127.0.0.1:8000", f"{host}:{port}")
    exec(compile(code, f"README:{name}", "exec"), namespace)
    return namespace


def test_readme_tritonclient_example_blurs(server: FrameServer) -> None:
    namespace = run_example("examples/triton_client.py", server, {})
    frame = namespace["frame"]
    blurred = namespace["blurred"]
    assert isinstance(frame, np.ndarray) and isinstance(blurred, np.ndarray)
    expected = gaussian_blur(torch.from_numpy(frame).permute(2, 0, 1), 4.0)
    assert np.allclose(blurred, expected.permute(1, 2, 0).numpy(), atol=1e-5)


def test_readme_frameserve_client_example_blurs_and_reports(server: FrameServer) -> None:
    frame = np.random.default_rng(1).random((90, 160, 3), dtype=np.float32)
    namespace = run_example("examples/frameserve_client.py", server, {"frame": frame})
    blurred = namespace["blurred"]
    objects = namespace["objects"]
    expected = gaussian_blur(torch.from_numpy(frame).permute(2, 0, 1), 4.0)
    assert np.allclose(blurred, expected.permute(1, 2, 0).numpy(), atol=1e-5)
    assert isinstance(objects, list) and objects[0]["name"] == "PythonScript"
