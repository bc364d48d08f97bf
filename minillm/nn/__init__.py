"""minillm.nn: Module, Parameter, layers, their initialisers and gradient utilities.

Names follow PyTorch's torch.nn: ``nn.Linear``, ``nn.Module``, ``nn.functional`` (the same
module as minillm.functional), ``nn.init``, ``nn.utils.clip_grad_norm_``.
"""
from minillm import functional
from . import init, utils
from .layers import (Dropout, Embedding, GELU, Identity, LayerNorm, Linear, ModuleDict, ModuleList,
                     ReLU, RMSNorm, Sequential, Sigmoid, Tanh)
from .module import Module, Parameter

__all__ = ["Module", "Parameter", "Linear", "Embedding", "LayerNorm", "RMSNorm", "ReLU", "GELU", "Tanh", "Sigmoid",
           "Dropout", "Identity", "Sequential", "ModuleList", "ModuleDict", "functional", "init", "utils"]
