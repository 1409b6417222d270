"""hfgen: every major family of generative models, packaged the Hugging Face way.

Each family is a diffusers-style model (`hfgen.models.modeling_<family>`), a pipeline
(`hfgen.pipelines.pipeline_<family>`), and a trainer (`hfgen.training.trainer_<family>`) run by one shared
Accelerate loop.
"""

__version__ = "0.1.0"

from hfgen.conditioning import Condition, ConditionEncoder
from hfgen.models.modeling_autoregressive import (
    DiagonalBiLSTMModel,
    GatedPixelCNNModel,
    PixelCNNModel,
    RowLSTMModel,
    build_transformer_prior,
)
from hfgen.models.modeling_flow import FlowModel
from hfgen.models.modeling_gan import GANDiscriminator, GANGenerator
from hfgen.models.modeling_score import ScoreMLPModel
from hfgen.models.modeling_vae import VAEModel
from hfgen.models.scheduling_score import AnnealedLangevinScheduler
from hfgen.pipelines.pipeline_autoregressive import AutoregressivePipeline
from hfgen.pipelines.pipeline_diffusion import DiffusionImagePipeline
from hfgen.pipelines.pipeline_flow import FlowPipeline
from hfgen.pipelines.pipeline_gan import GANPipeline
from hfgen.pipelines.pipeline_score import ScorePipeline
from hfgen.pipelines.pipeline_utils import HFGenPipeline, LikelihoodOutput
from hfgen.pipelines.pipeline_vae import VAEPipeline

# Opens any saved hfgen pipeline: reads model_index.json and returns the right family's pipeline class.
load_pipeline = HFGenPipeline.from_pretrained

__all__ = [
    "AnnealedLangevinScheduler",
    "AutoregressivePipeline",
    "DiagonalBiLSTMModel",
    "GatedPixelCNNModel",
    "PixelCNNModel",
    "RowLSTMModel",
    "build_transformer_prior",
    "Condition",
    "ConditionEncoder",
    "DiffusionImagePipeline",
    "FlowModel",
    "FlowPipeline",
    "GANDiscriminator",
    "GANGenerator",
    "GANPipeline",
    "HFGenPipeline",
    "LikelihoodOutput",
    "ScoreMLPModel",
    "ScorePipeline",
    "VAEModel",
    "VAEPipeline",
    "load_pipeline",
]
