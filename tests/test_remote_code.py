"""Self-contained Hub repos (hfgen.remote_code): a pipeline pushed with hfgen.hub.push_to_hub loads with diffusers
alone, `DiffusionPipeline.from_pretrained(repo_id, trust_remote_code=True)`, in a process that cannot import hfgen,
and generates the same images; without `trust_remote_code` diffusers refuses; hfgen loads the same repo with its
installed classes and runs none of the repo's code."""

import ast
import hashlib
import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import HUB_TOKEN, HUB_USER, LOOPBACK_ONLY_SCRIPT, hub_subprocess_env, make_tiny_text_components
from huggingface_hub import snapshot_download

import hfgen
from hfgen.hub import push_to_hub
from hfgen.remote_code import ALLOWED_IMPORTS, bundle_module, make_self_contained

CAPTIONS = ["a handwritten digit seven", "a handwritten digit one"]

# Runs in a fresh interpreter that cannot import hfgen (a meta path finder refuses it, whatever sys.path holds) nor
# reach anything but the loopback. Tries one repo without trust_remote_code, then loads each repo with it and prints
# a JSON line: the error, and per repo the classes loaded and a hash of the images for seed 0.
SUBPROCESS_SCRIPT = LOOPBACK_ONLY_SCRIPT + textwrap.dedent(
    """
    import hashlib, importlib.abc, json, os, sys

    class RefuseHfgen(importlib.abc.MetaPathFinder):
        attempts = []

        def find_spec(self, name, path=None, target=None):
            if name == "hfgen" or name.startswith("hfgen."):
                self.attempts.append(name)
                raise ImportError(f"hfgen is not installed here: {name}")
            return None

    sys.meta_path.insert(0, RefuseHfgen())
    sys.path[:] = [p for p in sys.path if p and not os.path.isdir(os.path.join(p, "hfgen"))]

    import numpy as np
    import torch
    from diffusers import DiffusionPipeline

    calls = json.loads(sys.argv[1])
    result = {}
    try:
        DiffusionPipeline.from_pretrained(next(iter(calls)))
        result["refused"] = None
    except ValueError as error:
        result["refused"] = str(error)
    for repo_id, call in calls.items():
        pipe = DiffusionPipeline.from_pretrained(repo_id, trust_remote_code=True)
        images = pipe(**call, generator=torch.manual_seed(0), output_type="np").images
        result[repo_id] = {
            "classes": {
                name: type(c).__module__ + "." + type(c).__name__
                for name, c in {"pipeline": pipe, **pipe.components}.items() if c is not None
            },
            "images": hashlib.sha256(np.ascontiguousarray(images, dtype=np.float32).tobytes()).hexdigest(),
        }
    result["hfgen_import_attempts"] = RefuseHfgen.attempts
    result["hfgen_modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "hfgen")
    print("RESULT " + json.dumps(result))
    """
)


def images_hash(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images, dtype=np.float32).tobytes()).hexdigest()


def tiny_pipelines() -> dict:
    """name -> (pipeline, call arguments): the landed families, unconditional and text-conditioned."""
    torch.manual_seed(0)
    vae_args = dict(sample_size=8, in_channels=1, latent_dim=4, block_out_channels=(8, 16), norm_num_groups=4)
    tokenizer, text_encoder = make_tiny_text_components(CAPTIONS)
    pipelines = {
        "vae": (hfgen.VAEPipeline(vae=hfgen.VAEModel(**vae_args, num_bins=17)), {"batch_size": 4}),
        "vae-text": (
            hfgen.VAEPipeline(
                vae=hfgen.VAEModel(**vae_args, condition_type="text", text_embed_dim=32),
                tokenizer=tokenizer,
                text_encoder=text_encoder,
            ),
            {"prompt": CAPTIONS, "num_images_per_prompt": 2},
        ),
    }
    if hasattr(hfgen, "GANPipeline"):
        generator = hfgen.GANGenerator(sample_size=8, noise_dim=8, block_out_channels=(8, 16)).eval()
        pipelines["gan"] = (hfgen.GANPipeline(generator=generator), {"batch_size": 4})
    return pipelines


def sample(pipe, call: dict) -> np.ndarray:
    return pipe(**call, generator=torch.manual_seed(0), output_type="np").images


@pytest.fixture(scope="module")
def pushed(hub, tmp_path_factory):
    """Each tiny pipeline saved (with a model card) and pushed: name -> (repo id, call, local folder, images)."""
    repos = {}
    for name, (pipe, call) in tiny_pipelines().items():
        folder = tmp_path_factory.mktemp(name)
        pipe.save_pretrained(folder)
        family = name.split("-")[0]
        hfgen.hub.write_model_card(
            str(folder),
            family=family,
            pipeline_class=type(pipe).__name__,
            pipeline_tag="text-to-image" if "prompt" in call else "unconditional-image-generation",
            dataset="digits",
            settings={},
        )
        repo_id = f"{HUB_USER}/remote-{name}"
        push_to_hub(str(folder), repo_id, token=HUB_TOKEN)
        repos[name] = (repo_id, call, folder, sample(pipe, call))
    return repos


@pytest.fixture(scope="module")
def diffusers_only_run(hub, pushed, tmp_path_factory):
    """The subprocess run once for every pushed repo: its parsed RESULT line."""
    tmp_path = tmp_path_factory.mktemp("no-hfgen")
    env = hub_subprocess_env(hub, tmp_path / "hf_home")  # an empty cache, and no remote code modules yet
    calls = {repo_id: call for repo_id, call, _, _ in pushed.values()}
    result = subprocess.run(
        [sys.executable, "-c", SUBPROCESS_SCRIPT, json.dumps(calls)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(lines[0].removeprefix("RESULT "))


def test_diffusers_alone_loads_and_generates_the_same_images(pushed, diffusers_only_run):
    assert diffusers_only_run["hfgen_import_attempts"] == []
    assert diffusers_only_run["hfgen_modules"] == []
    for name, (repo_id, _, _, images) in pushed.items():
        loaded = diffusers_only_run[repo_id]
        assert loaded["images"] == images_hash(images), name
        # The pipeline and the hfgen model come from the repo's code (diffusers' dynamic modules), the text
        # components from transformers.
        classes = loaded["classes"]
        assert classes["pipeline"].startswith("diffusers_modules.") and classes["pipeline"].endswith("Pipeline")
        model = "vae" if name.startswith("vae") else "generator"
        assert classes[model].startswith("diffusers_modules."), classes
        if "prompt" in pushed[name][1]:
            assert classes["text_encoder"] == "transformers.models.clip.modeling_clip.CLIPTextModel"


def test_diffusers_refuses_without_trust_remote_code(diffusers_only_run):
    refused = diffusers_only_run["refused"]
    assert refused is not None and "custom code" in refused and "Pass `trust_remote_code=True`" in refused


def test_hfgen_loads_the_repo_with_its_installed_classes(pushed, fresh_cache):
    modules_before = set(sys.modules)
    for name, (repo_id, call, _, images) in pushed.items():
        pipe = hfgen.load_pipeline(repo_id)
        assert type(pipe).__module__.startswith("hfgen.pipelines."), name
        assert all(type(c).__module__.startswith(("hfgen.", "transformers.")) for c in pipe.components.values() if c)
        np.testing.assert_array_equal(sample(pipe, call), images)
    assert type(hfgen.VAEPipeline.from_pretrained(pushed["vae"][0]).vae) is hfgen.VAEModel
    assert not [m for m in set(sys.modules) - modules_before if m.startswith("diffusers_modules")]


def test_repo_layout_and_bundled_code(hub, pushed, tmp_path):
    repo_id, _, folder, _ = pushed["vae"]
    files = hub.get_repo(repo_id).commits[hub.get_repo(repo_id).branches["main"]].files
    assert {"pipeline_vae.py", "vae/modeling_vae.py", "vae/diffusion_pytorch_model.safetensors"} <= set(files)
    index = json.loads(files["model_index.json"])
    assert index["_class_name"] == ["pipeline_vae", "VAEPipeline"]
    assert index["vae"] == ["modeling_vae", "VAEModel"] and index["tokenizer"] == [None, None]
    card = files["README.md"].decode()
    assert "## Without hfgen" in card and f'"{repo_id}", trust_remote_code=True' in card

    # The local folder keeps the plain hfgen format.
    with open(folder / "model_index.json") as f:
        assert json.load(f)["vae"] == ["hfgen.models.modeling_vae", "VAEModel"]
    assert not (folder / "pipeline_vae.py").exists() and "Without hfgen" not in (folder / "README.md").read_text()

    # Every bundled file: the generated-code header, and imports of the standard library, torch, diffusers,
    # transformers, numpy and PIL only.
    code = {
        f"{name}/{path}": data.decode()
        for name in pushed
        for path, data in _head_files(hub, pushed[name][0]).items()
        if path.endswith(".py")
    }
    assert len(code) == 2 * len(pushed)
    for path, text in code.items():
        assert text.startswith("# Generated by hfgen.remote_code.make_self_contained from hfgen"), path
        assert "Do not edit it by hand" in text
        for node in ast.walk(ast.parse(text)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) else []
            for module in names:
                top = module.split(".")[0]
                assert top in ALLOWED_IMPORTS or top in sys.stdlib_module_names, (path, module)


def _head_files(hub, repo_id: str) -> dict:
    repo = hub.get_repo(repo_id)
    return repo.commits[repo.branches["main"]].files


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed")
def test_bundled_code_passes_ruff(hub, pushed, fresh_cache):
    """No undefined or unused names, sorted imports and the house format: what a reader of the repo sees."""
    folders = [snapshot_download(repo_id, allow_patterns=["*.py", "*/*.py"]) for repo_id, _, _, _ in pushed.values()]
    for check in (["check", "--select", "E,F,I,W"], ["format", "--check"]):
        result = subprocess.run(
            ["ruff", *check, "--isolated", "--no-cache", "--line-length", "119", *folders],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_self_contained_folder_refused_twice_and_loaded_locally(pushed, tmp_path):
    _, call, folder, images = pushed["vae"]
    shutil.copytree(folder, tmp_path / "pipe")
    written = make_self_contained(str(tmp_path / "pipe"), repo_id="someone/vae")
    assert written == ["pipeline_vae.py", "vae/modeling_vae.py", "model_index.json", "README.md"]
    with pytest.raises(ValueError, match="may be self-contained already"):
        make_self_contained(str(tmp_path / "pipe"))
    # A local self-contained folder loads with hfgen too (no trust_remote_code: hfgen runs none of its code).
    np.testing.assert_array_equal(sample(hfgen.load_pipeline(str(tmp_path / "pipe")), call), images)


def test_bundling_refuses_other_libraries(tmp_path, monkeypatch):
    (tmp_path / "fake_modeling.py").write_text("import scipy\n\n\ndef f():\n    return scipy\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="needs `scipy`"):
        bundle_module("fake_modeling")
