"""benchmarks/diffusion.py compares like with like: its plain loop (diffusers' train_unconditional.py) trains the
trainer's UNet config on the trainer's noise schedule, and with the same weights and random numbers losses agree."""

import importlib.util

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from hfgen.training.train import parse_config


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_diffusion", REPO_ROOT / "benchmarks" / "diffusion.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plain_loop_trains_the_trainers_unet_with_the_same_loss(tmp_path):
    bench = load_benchmark()
    args = bench.parse_args(["--batch_size", "16", "--seed", "0"])
    trainer = bench.build_trainer(args, steps=2, output_dir=str(tmp_path / "run"))
    assert trainer.config.conditioning == "none" and trainer.config.snr_gamma is None and trainer.ema is None
    run, model, noise_scheduler = bench.build_plain_loop(args, trainer, steps=2)
    trainer_unet = trainer.accelerator.unwrap_model(trainer.model)
    assert dict(model.config) == dict(trainer_unet.config)
    assert dict(noise_scheduler.config) == dict(trainer.noise_scheduler.config)

    # Same weights, same random numbers: the trainer's loss is diffusers' loss, up to the order of the sums (the
    # trainer averages per image first, for Min-SNR's per-image weights; on some CPUs the last bit differs).
    model.load_state_dict(trainer_unet.state_dict())
    clean = torch.rand(16, 1, 8, 8) * 2 - 1
    torch.manual_seed(1)
    expected = bench.diffusers_loss(model, noise_scheduler, clean)
    torch.manual_seed(1)
    got = trainer.compute_loss({"pixel_values": clean}, None)["loss"]
    torch.testing.assert_close(got, expected, atol=0, rtol=1e-6)

    # The plain loop really trains.
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    run()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(before[name], p), f"Parameter {name} has not changed."


def test_guidance_part_samples_a_text_model_from_its_prompts_and_refuses_a_class_model_on_shapes(tiny_text_components):
    """The guidance part takes a text-conditioned model (the shapes row samples the prompts' text) as well as the
    class-conditional digits model, and refuses a pairing it cannot score."""
    from test_diffusion import tiny_pipeline

    bench = load_benchmark()
    args = bench.parse_args(
        ["--dataset", "digits", "--guidance_samples", "2", "--guidance_scales", "1,3", "--guidance_steps", "2"]
    )
    pipeline = tiny_pipeline("text", tiny_text_components)
    pipeline.set_progress_bar_config(disable=True)
    rows = bench.guidance(args, pipeline)
    assert [row["guidance_scale"] for row in rows] == [1.0, 3.0]
    for row in rows:
        assert 0 <= row["adherence_seen"] <= 1 and sum(count for _, count in row["most_predicted"]) <= 20
    assert isinstance(pipeline.scheduler, type(tiny_pipeline().scheduler))  # the trained scheduler is put back

    args.guidance_prompts, args.guidance_scales = "paraphrase", "1"
    (row,) = bench.guidance(args, pipeline)  # the 40 digit paraphrases, 2 images each
    assert 0 <= row["adherence_paraphrase"] <= 1 and "adherence_seen" not in row
    assert sum(count for _, count in row["most_predicted"]) <= 80
    with pytest.raises(SystemExit, match="paraphrase needs a text-conditioned model"):
        bench.guidance(args, tiny_pipeline("class"))

    args.dataset, args.guidance_prompts = "shapes", "seen"
    with pytest.raises(SystemExit, match="class-conditional digits model or a text-conditioned one"):
        bench.guidance(args, tiny_pipeline("class"))


def load_shapes_positions():
    spec = importlib.util.spec_from_file_location("shapes_positions", REPO_ROOT / "benchmarks" / "shapes_positions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shapes_positions_first_step_reads_where_a_foreground_sits():
    module = load_shapes_positions()
    foreground = torch.zeros(32, 32)
    foreground[2:12, 20:30] = 1.0  # a square in the top right quadrant
    assert module.centroid_position(foreground) == "top right"
    assert module.share_near(foreground, "top right") == 1.0 and module.share_near(foreground, "bottom left") == 0.0
    assert module.centroid_position(torch.ones(32, 32) + torch.rand(32, 32) * 1e-3) == "center"


def test_shapes_positions_word_swap_changes_only_the_corner():
    module = load_shapes_positions()
    rng = np.random.default_rng(0)
    for corner in module.CORNERS:
        swapped = module.swap_corner(f"a large red square at the {corner}", rng)
        other = swapped.removeprefix("a large red square at the ")
        assert other in module.CORNERS and other != corner
    assert module.swap_corner("a large red square in the center", rng) == "a large red square in the center"
    # The best prediction from a key is its group's mean: exact for identical members, worse for a coarser key.
    images = torch.tensor([[0.0], [0.0], [1.0], [3.0]])
    assert module.group_mean_error(images, ["a", "a", "b", "c"]) == 0.0
    assert module.group_mean_error(images, ["a", "a", "b", "b"]) == pytest.approx(2 / 4)


def test_dataset_picks_the_recipes_and_refuses_what_it_cannot_measure():
    """`--dataset mnist` measures the mnist recipes; the throughput stays a digits figure and the shapes are for the
    guidance of a trained text model only, each refused with what to pass instead."""
    bench = load_benchmark()
    for dataset in ("digits", "mnist"):
        for recipes in (bench.RECIPE, bench.LATENT_VAE_RECIPE, bench.LATENT_RECIPE):
            _, config = parse_config(["--recipe", recipes[dataset]])
            assert config.dataset_name == dataset
    with pytest.raises(SystemExit, match="throughput is measured on the digits"):
        bench.main(["--dataset", "mnist", "--parts", "throughput"])
    with pytest.raises(SystemExit, match="other parts take digits or mnist"):
        bench.main(["--dataset", "shapes", "--parts", "fid"])
    with pytest.raises(SystemExit, match="guidance of a trained text-conditioned --model"):
        bench.main(["--dataset", "shapes", "--parts", "guidance"])


def test_mnist_latent_recipe_denoises_the_first_stages_latent_grid(tmp_path):
    """The mnist latent recipe's UNet fits the 2 x 14 x 14 latents of the mnist first stage (a grid its down and up
    blocks halve and restore), and the pipeline decodes its samples to 28x28 digits."""
    import hfgen

    vae_dir, latent_dir = str(tmp_path / "vae"), str(tmp_path / "latent")
    bench = load_benchmark()
    short = ["--max_train_steps", "2", "--train_batch_size", "8", "--report_to", "none", "--validation_steps", "0"]
    for argv in (
        ["--recipe", bench.LATENT_VAE_RECIPE["mnist"], "--output_dir", vae_dir, *short],
        ["--recipe", bench.LATENT_RECIPE["mnist"], "--vae_name_or_path", vae_dir, "--output_dir", latent_dir, *short],
    ):
        trainer_class, config = parse_config(argv)
        trainer_class(config).train()
    pipeline = hfgen.DiffusionImagePipeline.from_pretrained(latent_dir)
    assert (pipeline.unet.config.in_channels, pipeline.unet.config.sample_size) == (2, 14)
    images = pipeline.generate(2, seed=0, num_inference_steps=2)
    assert images.shape == (2, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
