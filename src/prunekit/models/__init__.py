"""prunekit's model zoo: CNNs for images and graph convolutional networks for skeletons.

Every model is built by name through a small registry, so a saved model can name its
architecture (``model.prunekit_arch``) instead of being pickled:

=================  =====================================================  ==============
name               architecture                                           input
=================  =====================================================  ==============
``mlp``            flatten → Linear/ReLU hidden layers → Linear           ``[N, C, H, W]``
``vgg11/vgg16``    VGG with BatchNorm, avg-pool → Linear head             ``[N, C, H, W]``
``resnet20/56``    CIFAR ResNet, BasicBlocks, option-B shortcuts          ``[N, C, H, W]``
``densenet``       3 dense blocks (torch.cat), BN-ReLU-Conv1×1 transitions ``[N, C, H, W]``
``mobilenetv2``    inverted residuals with depthwise convs, small config  ``[N, C, H, W]``
``stgcn``          ST-GCN blocks with :class:`GraphConv`                  ``[N, C, T, V]``
``attention_gcn``  the same blocks with :class:`MultiHeadGraphAttention`  ``[N, C, T, V]``
=================  =====================================================  ==============

Every model takes ``in_channels``, ``num_classes`` and a ``width`` multiplier, and
accepts any spatial (or temporal) input size.

Example:
    >>> import torch
    >>> from prunekit import models
    >>> net = models.create("stgcn", graph="fpha", num_classes=45)
    >>> x = models.example_inputs(net, batch=2)
    >>> net(x).shape
    torch.Size([2, 45])
    >>> spec = net.prunekit_arch              # {"name": "stgcn", "kwargs": {...}}: JSON
    >>> models.create(spec["name"], **spec["kwargs"]).fc.out_features
    45
"""
from .registry import ModelEntry, create, example_inputs, names, register, resolve_kwargs
from ..core.blocks import PrunableBlock
from .layers import GraphConv, MultiHeadGraphAttention
from .mlp import MLP, mlp
from .vgg import VGG, VGG_CONFIGS, vgg11, vgg16
from .resnet import BasicBlock, ResNet, resnet20, resnet56
from .densenet import DenseLayer, DenseNet, Transition, densenet
from .mobilenet import InvertedResidual, MobileNetV2, mobilenetv2
from .gcn import GCNBlock, SkeletonGCN, attention_gcn, stgcn

__all__ = [
    "create", "names", "register", "example_inputs", "resolve_kwargs", "ModelEntry",
    "PrunableBlock", "GraphConv", "MultiHeadGraphAttention",
    "MLP", "VGG", "VGG_CONFIGS", "BasicBlock", "ResNet", "DenseLayer", "Transition", "DenseNet",
    "InvertedResidual", "MobileNetV2", "GCNBlock", "SkeletonGCN",
    "mlp", "vgg11", "vgg16", "resnet20", "resnet56", "densenet", "mobilenetv2", "stgcn", "attention_gcn",
]
