"""Training networks from a few example frames, CopyCat style, and serving what they learn.

An artist gives a few before/after frames; a network learns the transform and frameserve
serves it like any other model. The library API, for the job queue, HTTP endpoints and CLI::

    from frameserve.training import (
        FramePair, ImagePairs, Trainer, TrainingSettings, trained_model_class,
    )

    pairs = ImagePairs.from_files([("in.1001.exr", "out.1001.exr"),
                                   ("in.1040.exr", "out.1040.exr")],
                                  validation=[("in.1100.exr", "out.1100.exr")])
    trainer = Trainer(pairs, TrainingSettings(steps=2000), job_dir="jobs/degrain",
                      name="degrain", on_progress=report)     # report(TrainingProgress)
    trainer.run(should_stop=cancel_event.is_set)              # checkpoint at the end

    trainer = Trainer.resume("jobs/degrain")                  # after a stop or a crash
    network, metadata = load_trained("jobs/degrain")          # the newest checkpoint
    write_model_plugin("jobs/degrain", "models/degrain")      # served as model "degrain"
    export_torchscript("jobs/degrain", "degrain.pt")

Modules, one job each:

================  ==========================================================================
``settings``      :class:`TrainingSettings`: network size, crops, steps, schedule, intervals
``kinds``         :class:`~frameserve.training.kinds.JobKind`: image, label or number jobs
``networks``      the U-Net (sizes small / medium / large) and the label/number encoder
``data``          frame pairs (arrays or files), random crops, fixed validation crops
``labels``        images with labels (class folders) or numbers (a CSV or JSON table)
``augment``       flips, 90° rotations, colour jitter: what is safe for which effect
``degradations``  synthetic motion blur and sensor noise on the inputs, afresh each step
``tasks``         what differs between image, label and number jobs
``trainer``       :class:`Trainer`: builds or resumes a job, the step loop, what is due
``progress``      :class:`TrainingProgress` after each step, and how steps are timed
``checkpoints``   the job folder, checkpoint files written atomically, safe reads
``reload``        a job's data read again from the files its checkpoint lists
``contact_sheet`` input | prediction | target previews
``inference``     :func:`load_trained`, :func:`trained_model_class`, plug-in folders
``export``        :func:`export_torchscript`, :func:`export_package`
``uploads``       frame files uploaded for jobs over HTTP, streamed to disk, with owners
``upload_checks`` what an upload must be: a plain image file name, the format's signature
``jobs``          jobs on a server: the queue, their records, limits, serving them as models
================  ==========================================================================

Errors: settings or data that cannot work, unreadable checkpoints and resuming with other data
raise :class:`~frameserve.errors.ConfigError`; bad frame arrays
:class:`~frameserve.errors.FrameError`; unreadable image files
:class:`~frameserve.errors.ImageIOError`.
"""

from __future__ import annotations

from frameserve.training.augment import Augmentation
from frameserve.training.checkpoints import (
    LATEST,
    CheckpointEntry,
    job_summary,
    list_checkpoints,
    read_job_file,
    resolve_checkpoint,
)
from frameserve.training.contact_sheet import contact_sheet, write_contact_sheet
from frameserve.training.data import FramePair, ImagePairs
from frameserve.training.export import export_package, export_torchscript
from frameserve.training.inference import (
    TrainedMetadata,
    load_trained,
    model_id_for,
    trained_model_class,
    write_model_plugin,
)
from frameserve.training.kinds import JobKind
from frameserve.training.labels import LabelledImage, LabelledImages
from frameserve.training.networks import (
    NETWORK_SIZES,
    ImageEncoder,
    NetworkSpec,
    UNet,
    build_network,
    receptive_field_radius,
    size_multiple,
)
from frameserve.training.progress import ProgressCallback, TrainingProgress
from frameserve.training.settings import LOSSES, SCHEDULES, TrainingSettings
from frameserve.training.trainer import Trainer

__all__ = [
    "LATEST",
    "LOSSES",
    "NETWORK_SIZES",
    "SCHEDULES",
    "Augmentation",
    "CheckpointEntry",
    "FramePair",
    "ImageEncoder",
    "ImagePairs",
    "JobKind",
    "LabelledImage",
    "LabelledImages",
    "NetworkSpec",
    "ProgressCallback",
    "TrainedMetadata",
    "Trainer",
    "TrainingProgress",
    "TrainingSettings",
    "UNet",
    "build_network",
    "contact_sheet",
    "export_package",
    "export_torchscript",
    "job_summary",
    "list_checkpoints",
    "load_trained",
    "model_id_for",
    "read_job_file",
    "receptive_field_radius",
    "resolve_checkpoint",
    "size_multiple",
    "trained_model_class",
    "write_contact_sheet",
    "write_model_plugin",
]
