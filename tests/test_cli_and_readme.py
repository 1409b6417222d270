"""The `hfgen` command and the README's two set-up commands."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from hfgen.training.train import TRAINERS
from testing_utils import load_app

import hfgen
from hfgen.cli import main as hfgen_main

REPO = Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    """The bash blocks of the README's "Set up" section, in order."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_readme_has_exactly_two_setup_commands_that_install_torch_first():
    commands = setup_commands()
    assert len(commands) == 2
    for command in commands:
        assert command.index("pip install torch==2.13.0") < command.index("pip install -e")
    assert "training/train.py" in commands[0]
    assert "pytest tests" in commands[1]
    ci = (REPO / ".ci" / "run").read_text()  # CI runs the README's test command
    assert "torch==2.13.0" in ci and '-e ".[test]"' in ci and "python -m pytest tests -q" in ci


@pytest.fixture(scope="module")
def trained_by_readme(tmp_path_factory):
    """The README's main job, shortened: the same accelerate launch command with fewer steps."""
    launch = setup_commands()[0].split("&& ")[-1]
    output_dir = tmp_path_factory.mktemp("readme") / "vae-digits"
    args = shlex.split(launch) + [
        "--max_train_steps",
        "20",
        "--validation_steps",
        "10",
        "--output_dir",
        str(output_dir),
    ]
    assert args[:2] == ["accelerate", "launch"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    bin_dir = os.path.dirname(sys.executable)
    result = subprocess.run(
        [os.path.join(bin_dir, "accelerate"), *args[1:]],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir, result.stdout


def test_readme_main_job_writes_model_grid_and_says_where(trained_by_readme):
    output_dir, stdout = trained_by_readme
    assert (output_dir / "model_index.json").is_file()
    assert (output_dir / "samples" / "final.png").is_file()
    assert (output_dir / "samples" / "step-000010.png").is_file()
    assert (output_dir / "README.md").is_file()
    assert f"Saved the vae pipeline to {output_dir}" in stdout
    # The Space command it prints runs: the gallery app exists and has a tab (a flag) for every family.
    space = next(line for line in stdout.splitlines() if line.startswith("Space:")).split()[1:]
    assert space == ["python", "spaces/gallery/app.py", "--vae", str(output_dir)] and (REPO / space[1]).is_file()
    assert set(load_app(REPO / space[1], "gallery_app").FAMILIES) == set(TRAINERS)


def test_cli_generate_and_info(trained_by_readme, tmp_path, capsys):
    output_dir, _ = trained_by_readme
    grid = tmp_path / "grid.png"
    hfgen_main(["generate", str(output_dir), "--prompt", "a handwritten digit seven", "-n", "4", "-o", str(grid)])
    assert grid.is_file()
    hfgen_main(["info", str(output_dir)])
    out = capsys.readouterr().out
    assert "VAEPipeline" in out and "VAEModel" in out and "CLIPTextModel" in out
    assert "test_iwae50_bits_per_dim" in out


def test_cli_generate_is_seeded(trained_by_readme, tmp_path):
    output_dir, _ = trained_by_readme
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for path in paths:
        hfgen_main(["generate", str(output_dir), "-n", "4", "--seed", "3", "-o", str(path)])
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_cli_generate_with_guidance(trained_by_readme, tmp_path):
    """`--guidance_scale` reaches the pipeline through `generate`: a guided grid differs from the plain one."""
    output_dir, _ = trained_by_readme
    prompt = ["--prompt", "a handwritten digit seven", "-n", "4", "--seed", "3"]
    hfgen_main(["generate", str(output_dir), *prompt, "-o", str(tmp_path / "plain.png")])
    hfgen_main(["generate", str(output_dir), *prompt, "--guidance_scale", "3", "-o", str(tmp_path / "guided.png")])
    assert (tmp_path / "plain.png").read_bytes() != (tmp_path / "guided.png").read_bytes()


def test_cli_datasets_export_round_trips(tmp_path):
    hfgen_main(["datasets", "export", "digits", str(tmp_path / "digits")])
    dataset = datasets.load_from_disk(str(tmp_path / "digits"))
    assert len(dataset) == 1797 and {"image", "label", "text"} <= set(dataset.column_names)


def test_cli_rejects_unknown_flags_outside_train():
    with pytest.raises(SystemExit):
        hfgen_main(["info", "x", "--bogus"])


def test_cli_train_runs_the_same_entry_point(tmp_path):
    output_dir = tmp_path / "run"
    hfgen_main(
        [
            "train",
            "--family",
            "vae",
            "--dataset_name",
            "digits",
            "--conditioning",
            "none",
            "--max_train_steps",
            "2",
            "--block_out_channels",
            "8",
            "16",
            "--latent_dim",
            "4",
            "--norm_num_groups",
            "4",
            "--report_to",
            "none",
            "--eval_num_samples",
            "2",
            "--eval_max_images",
            "8",
            "--output_dir",
            str(output_dir),
        ]
    )
    pipeline = hfgen.load_pipeline(str(output_dir))
    assert isinstance(pipeline, hfgen.VAEPipeline) and pipeline.tokenizer is None
    assert pipeline(batch_size=2, generator=torch.manual_seed(0), output_type="pt").images.shape == (2, 1, 8, 8)
