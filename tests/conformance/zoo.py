"""Model zoo of the conformance suite: architectures prunekit did not write, tiny and deterministic.

``ZOO`` maps a short id to a builder; a builder returns a :class:`Case` (a model in
``eval()`` mode, its inputs and optionally how to pick the main output tensor). Every
builder seeds ``torch.manual_seed(0)`` first, so the same id gives the same weights and
inputs every time. Sizes are tiny (hidden ≤ 64, ≤ 2 layers, vocab ≤ 100, images ≤ 32×32,
sequences ≤ 8, batch 2): building and one forward take well under a second on a CPU.

Two kinds of architectures:

* ``HF_IDS``: Hugging Face ``transformers`` models built offline from small configs
  (nothing downloaded), ``attn_implementation="eager"`` (explicit matmul/softmax attention,
  deterministic, supported by every family here), with ``*ForSequenceClassification`` /
  ``*ForImageClassification`` heads where the family has one. Text inputs are dicts
  (``input_ids``, ``attention_mask``, ``token_type_ids`` where the family uses them; the
  second sample's last two tokens are padding).
* ``HAND_IDS``: plain PyTorch models written here the way users write them (views with
  ``x.size(0)``, ``-1`` and head counts, ``nn.Parameter`` used directly in ``forward``,
  einsum graph convolutions, recurrent layers, several or keyword inputs, dict outputs).

Example::

    case = ZOO["lenet"]()
    with torch.no_grad():
        y = main_output(call(case.model, case.inputs))   # y.shape == (2, 10)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

BATCH, SEQ, VOCAB = 2, 8, 100


@dataclass
class Case:
    """One architecture: ``model`` (eval mode), ``inputs`` and how to read its main output.

    ``inputs`` is a tensor, a tuple of tensors (positional arguments) or a dict (keyword
    arguments); ``output`` maps the raw output to one tensor (``None``: :func:`main_output`).
    """

    model: nn.Module
    inputs: Any
    output: Callable | None = None

    def run(self, model: nn.Module | None = None) -> torch.Tensor:
        """The main output tensor of ``model`` (default: this case's model) on this case's inputs."""
        out = call(self.model if model is None else model, self.inputs)
        return (self.output or main_output)(out)


def call(model: nn.Module, inputs):
    """``model(inputs)``, ``model(*inputs)`` or ``model(**inputs)`` as the inputs' type asks."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def main_output(out) -> torch.Tensor:
    """The main tensor of a model output.

    A tensor is itself; a dict or HF ``ModelOutput`` gives ``logits`` if present, else
    ``last_hidden_state``, else its first tensor value; a tuple or list its first tensor
    (searched depth-first).
    """
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):  # HF ModelOutput is an OrderedDict
        for key in ("logits", "last_hidden_state"):
            if isinstance(out.get(key), torch.Tensor):
                return out[key]
        values = list(out.values())
    elif isinstance(out, (tuple, list)):
        values = list(out)
    else:
        raise TypeError(f"no tensor in output of type {type(out).__name__}")
    for v in values:
        try:
            return main_output(v)
        except TypeError:
            continue
    raise TypeError(f"no tensor in output of type {type(out).__name__}")


ZOO: dict[str, Callable[[], Case]] = {}
HF_IDS: list[str] = []
HAND_IDS: list[str] = []


def _register(name: str, hf: bool = False):
    def deco(fn):
        assert name not in ZOO, name
        ZOO[name] = fn
        (HF_IDS if hf else HAND_IDS).append(name)
        return fn
    return deco


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

def _text(token_types: bool = True, pad: int = 0, vocab: int = VOCAB, seq: int = SEQ) -> dict:
    """Token ids (no pad id inside), attention mask; the second sample ends in two pad tokens."""
    ids = torch.randint(3, vocab, (BATCH, seq))
    mask = torch.ones(BATCH, seq, dtype=torch.long)
    ids[1, -2:], mask[1, -2:] = pad, 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if token_types:
        inputs["token_type_ids"] = torch.cat([torch.zeros(BATCH, seq // 2), torch.ones(BATCH, seq - seq // 2)],
                                             1).long()
    return inputs


def _image(size: int = 32, channels: int = 3) -> torch.Tensor:
    return torch.randn(BATCH, channels, size, size)


# ---------------------------------------------------------------------------------------------
# Hugging Face transformers, built from small configs
# ---------------------------------------------------------------------------------------------

def _hf(config_name: str, model_name: str, inputs_fn: Callable[[], Any], **config) -> Case:
    """Build ``transformers.<model_name>(<config_name>(**config))`` in eval mode with eager attention."""
    import transformers
    torch.manual_seed(0)
    cfg = getattr(transformers, config_name)(**config)
    cfg._attn_implementation = "eager"
    model = getattr(transformers, model_name)(cfg).eval()
    return Case(model, inputs_fn())


# BERT-style encoders: hidden 32, 2 layers, 4 heads, FFN 64, 3 labels
ENC = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
           max_position_embeddings=64, num_labels=3, pad_token_id=0)
# decoder-only LMs: the same, plus 2 key/value heads (grouped-query attention) where the family has them
DEC = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
           max_position_embeddings=64, num_labels=3, pad_token_id=0)
# vision transformers: 32×32 images, 8×8 patches
TEXT_TOWER = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                  pad_token_id=1, bos_token_id=0, eos_token_id=2)
VIT = dict(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
           intermediate_size=64, num_labels=10)


@_register("bert", hf=True)
def bert():
    return _hf("BertConfig", "BertForSequenceClassification", _text, **ENC)


@_register("roberta", hf=True)
def roberta():
    # RoBERTa's position ids start after pad_token_id; pad 1 as in the real vocabulary
    return _hf("RobertaConfig", "RobertaForSequenceClassification", lambda: _text(False, pad=1),
               **ENC | dict(pad_token_id=1))


@_register("xlm_roberta", hf=True)
def xlm_roberta():
    return _hf("XLMRobertaConfig", "XLMRobertaForSequenceClassification", lambda: _text(False, pad=1),
               **ENC | dict(pad_token_id=1))


@_register("camembert", hf=True)
def camembert():
    return _hf("CamembertConfig", "CamembertForSequenceClassification", lambda: _text(False, pad=1),
               **ENC | dict(pad_token_id=1))


@_register("distilbert", hf=True)
def distilbert():
    return _hf("DistilBertConfig", "DistilBertForSequenceClassification", lambda: _text(False),
               vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64,
               num_labels=3, pad_token_id=0)


@_register("albert", hf=True)
def albert():
    # factorized embeddings (16 → 32) and one layer group shared by both layers
    return _hf("AlbertConfig", "AlbertForSequenceClassification", _text, **ENC | dict(embedding_size=16))


@_register("electra", hf=True)
def electra():
    return _hf("ElectraConfig", "ElectraForSequenceClassification", _text, **ENC | dict(embedding_size=16))


@_register("mpnet", hf=True)
def mpnet():
    # 32 relative-attention buckets: MPNet's bucketing ignores the config's number (fewer buckets fail)
    return _hf("MPNetConfig", "MPNetForSequenceClassification", lambda: _text(False, pad=1),
               **ENC | dict(pad_token_id=1, bos_token_id=0, eos_token_id=2))


@_register("deberta_v2", hf=True)
def deberta_v2():
    return _hf("DebertaV2Config", "DebertaV2ForSequenceClassification", _text,
               **ENC | dict(relative_attention=True, position_buckets=8, max_relative_positions=16,
                            pos_att_type=["p2c", "c2p"], type_vocab_size=2, pooler_hidden_size=32))


@_register("convbert", hf=True)
def convbert():
    return _hf("ConvBertConfig", "ConvBertForSequenceClassification", _text,
               **ENC | dict(embedding_size=32, head_ratio=2, conv_kernel_size=3))


@_register("funnel", hf=True)
def funnel():
    return _hf("FunnelConfig", "FunnelForSequenceClassification", _text,
               vocab_size=VOCAB, d_model=32, n_head=4, d_head=8, d_inner=64, block_sizes=[1, 1], num_labels=3,
               pad_token_id=0)


@_register("modernbert", hf=True)
def modernbert():
    return _hf("ModernBertConfig", "ModernBertForSequenceClassification", lambda: _text(False),
               **ENC | dict(global_attn_every_n_layers=2, local_attention=4, bos_token_id=1, eos_token_id=2,
                            cls_token_id=1, sep_token_id=2))


@_register("gpt2", hf=True)
def gpt2():
    return _hf("GPT2Config", "GPT2ForSequenceClassification", lambda: _text(False),
               vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=64, num_labels=3,
               pad_token_id=0, bos_token_id=1, eos_token_id=2)


@_register("gpt_neo", hf=True)
def gpt_neo():
    return _hf("GPTNeoConfig", "GPTNeoForSequenceClassification", lambda: _text(False),
               vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
               max_position_embeddings=64, attention_types=[[["global", "local"], 1]], window_size=4,
               num_labels=3, pad_token_id=0, bos_token_id=1, eos_token_id=2)


@_register("gptj", hf=True)
def gptj():
    return _hf("GPTJConfig", "GPTJForSequenceClassification", lambda: _text(False),
               vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=64, rotary_dim=4,
               num_labels=3, pad_token_id=0, bos_token_id=1, eos_token_id=2)


@_register("opt", hf=True)
def opt():
    return _hf("OPTConfig", "OPTForSequenceClassification", lambda: _text(False, pad=1),
               vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
               word_embed_proj_dim=32, max_position_embeddings=64, num_labels=3, pad_token_id=1)


@_register("bloom", hf=True)
def bloom():
    return _hf("BloomConfig", "BloomForSequenceClassification", lambda: _text(False),
               vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4, num_labels=3, pad_token_id=0)


@_register("falcon", hf=True)
def falcon():
    # new decoder architecture with 2 key/value heads (grouped-query attention), parallel attention + MLP
    return _hf("FalconConfig", "FalconForSequenceClassification", lambda: _text(False),
               vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2,
               new_decoder_architecture=True, ffn_hidden_size=64, num_labels=3, pad_token_id=0)


@_register("llama", hf=True)
def llama():
    # RMSNorm, rotary embeddings, SwiGLU, grouped-query attention (4 query heads, 2 key/value heads)
    return _hf("LlamaConfig", "LlamaForSequenceClassification", lambda: _text(False),
               **DEC | dict(num_key_value_heads=2))


@_register("mistral", hf=True)
def mistral():
    return _hf("MistralConfig", "MistralForSequenceClassification", lambda: _text(False),
               **DEC | dict(num_key_value_heads=2, sliding_window=4))


@_register("qwen2", hf=True)
def qwen2():
    return _hf("Qwen2Config", "Qwen2ForSequenceClassification", lambda: _text(False),
               **DEC | dict(num_key_value_heads=2))


@_register("qwen3", hf=True)
def qwen3():
    # q/k RMSNorm over head_dim; head_dim set explicitly (not hidden / heads)
    return _hf("Qwen3Config", "Qwen3ForSequenceClassification", lambda: _text(False),
               **DEC | dict(num_key_value_heads=2, head_dim=16))


@_register("gemma", hf=True)
def gemma():
    return _hf("GemmaConfig", "GemmaForSequenceClassification", lambda: _text(False),
               **DEC | dict(num_key_value_heads=1, head_dim=8))


@_register("phi", hf=True)
def phi():
    # partial rotary embedding, parallel attention + MLP, dense output projection
    return _hf("PhiConfig", "PhiForSequenceClassification", lambda: _text(False),
               **DEC | dict(partial_rotary_factor=0.5))


@_register("phi3", hf=True)
def phi3():
    # fused qkv_proj and fused gate_up_proj Linear layers
    return _hf("Phi3Config", "Phi3ForSequenceClassification", lambda: _text(False),
               **DEC | dict(num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2))


@_register("mixtral", hf=True)
def mixtral():
    # mixture of experts: 4 experts, top-2 routing
    return _hf("MixtralConfig", "MixtralForSequenceClassification", lambda: _text(False),
               **DEC | dict(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2))


@_register("gemma2", hf=True)
def gemma2():
    # attention logit soft-capping, alternating sliding-window layers, pre- and post-norms
    return _hf("Gemma2Config", "Gemma2ForSequenceClassification", lambda: _text(False),
               **DEC | dict(num_key_value_heads=2, head_dim=8, sliding_window=4))


@_register("gpt_bigcode", hf=True)
def gpt_bigcode():
    # multi-query attention: one fused c_attn Linear giving hidden + 2 × head_dim outputs
    return _hf("GPTBigCodeConfig", "GPTBigCodeForSequenceClassification", lambda: _text(False),
               vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=64, multi_query=True,
               num_labels=3, pad_token_id=0, bos_token_id=1, eos_token_id=2)


@_register("codegen", hf=True)
def codegen():
    # fused qkv_proj split through a model-parallel reshape (mp_num = 4); no classification head: LM logits
    return _hf("CodeGenConfig", "CodeGenForCausalLM", lambda: _text(False),
               vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=64, n_ctx=64,
               pad_token_id=0, bos_token_id=1, eos_token_id=2)


@_register("mamba", hf=True)
def mamba():
    # selective state-space model (no attention), reference PyTorch scan; LM logits, lm_head tied to embeddings
    return _hf("MambaConfig", "MambaForCausalLM", lambda: {"input_ids": torch.randint(3, VOCAB, (BATCH, SEQ))},
               vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4,
               use_mambapy=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)


@_register("rwkv", hf=True)
def rwkv():
    # RWKV time-mix / channel-mix blocks (a recurrence over time steps in Python on the CPU); LM logits
    return _hf("RwkvConfig", "RwkvForCausalLM", lambda: {"input_ids": torch.randint(3, VOCAB, (BATCH, SEQ))},
               vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, attention_hidden_size=32, intermediate_size=64,
               context_length=16)


@_register("t5", hf=True)
def t5():
    def inputs():
        enc = _text(False)
        return {**enc, "decoder_input_ids": torch.randint(3, VOCAB, (BATCH, 4))}
    # encoder-decoder, relative position buckets, RMS-style T5LayerNorm, gated FFN off
    return _hf("T5Config", "T5ForConditionalGeneration", inputs,
               vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
               relative_attention_num_buckets=8, pad_token_id=0, decoder_start_token_id=0)


@_register("bart", hf=True)
def bart():
    def inputs():
        enc = _text(False, pad=1)  # ids are >= 3: no accidental end-of-sequence token
        enc["input_ids"][0, -1] = enc["input_ids"][1, -3] = 2  # one end-of-sequence token per row, before padding
        return enc
    return _hf("BartConfig", "BartForSequenceClassification", inputs,
               vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
               decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
               num_labels=3, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)


@_register("vit", hf=True)
def vit():
    return _hf("ViTConfig", "ViTForImageClassification", _image, **VIT)


@_register("deit", hf=True)
def deit():
    return _hf("DeiTConfig", "DeiTForImageClassification", _image, **VIT)


@_register("beit", hf=True)
def beit():
    # relative position bias, layer-scale lambda parameters, mean pooling
    return _hf("BeitConfig", "BeitForImageClassification", _image,
               **VIT | dict(use_relative_position_bias=True, layer_scale_init_value=0.1, use_mean_pooling=True))


@_register("dinov2", hf=True)
def dinov2():
    return _hf("Dinov2Config", "Dinov2ForImageClassification", _image, **VIT | dict(mlp_ratio=2))


@_register("clip_vision", hf=True)
def clip_vision():
    # CLIPForImageClassification takes the joint config and builds only the vision tower
    return _hf("CLIPConfig", "CLIPForImageClassification", _image, vision_config=VIT, text_config=TEXT_TOWER,
               num_labels=10)


@_register("clip_text", hf=True)
def clip_text():
    return _hf("CLIPTextConfig", "CLIPTextModel", lambda: _text(False, pad=1),
               vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               max_position_embeddings=SEQ, pad_token_id=1, bos_token_id=0, eos_token_id=2)


@_register("siglip_vision", hf=True)
def siglip_vision():
    return _hf("SiglipConfig", "SiglipForImageClassification", _image, vision_config=VIT, text_config=TEXT_TOWER,
               num_labels=10)


@_register("swin", hf=True)
def swin():
    # shifted windows of 2×2 patches, patch merging between stages
    return _hf("SwinConfig", "SwinForImageClassification", _image,
               image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=2,
               mlp_ratio=2.0, num_labels=10)


@_register("swinv2", hf=True)
def swinv2():
    return _hf("Swinv2Config", "Swinv2ForImageClassification", _image,
               image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=2,
               mlp_ratio=2.0, num_labels=10)


@_register("cvt", hf=True)
def cvt():
    # convolutional token embeddings and depthwise-conv + BatchNorm q/k/v projections; the second stage needs
    # 2 layers (CvtStage indexes its per-layer drop-path list by the stage number)
    return _hf("CvtConfig", "CvtForImageClassification", _image,
               patch_sizes=[7, 3], patch_stride=[4, 2], patch_padding=[2, 1], embed_dim=[16, 32], num_heads=[1, 2],
               depth=[1, 2], mlp_ratio=[2.0, 2.0], attention_drop_rate=[0.0, 0.0], drop_rate=[0.0, 0.0],
               drop_path_rate=[0.0, 0.0], qkv_bias=[True, True], cls_token=[False, True],
               qkv_projection_method=["dw_bn", "dw_bn"], kernel_qkv=[3, 3], padding_kv=[1, 1], stride_kv=[2, 2],
               padding_q=[1, 1], stride_q=[1, 1], num_labels=10)


@_register("levit", hf=True)
def levit():
    return _hf("LevitConfig", "LevitForImageClassification", _image,
               image_size=32, hidden_sizes=[32, 48], num_attention_heads=[2, 3], depths=[1, 1], key_dim=[8, 8],
               drop_path_rate=0, mlp_ratio=[2, 2], attention_ratio=[2, 2], num_labels=10,
               down_ops=[["Subsample", 8, 2, 2, 2, 2]])


@_register("segformer", hf=True)
def segformer():
    # hierarchical encoder with spatial-reduction attention and Mix-FFN depthwise convs
    return _hf("SegformerConfig", "SegformerForImageClassification", _image,
               num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3],
               strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], num_labels=10)


@_register("pvt_v2", hf=True)
def pvt_v2():
    return _hf("PvtV2Config", "PvtV2ForImageClassification", _image,
               image_size=32, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
               patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], num_labels=10)


@_register("focalnet", hf=True)
def focalnet():
    # focal modulation (depthwise context levels, gates) instead of attention
    return _hf("FocalNetConfig", "FocalNetForImageClassification", _image,
               image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], focal_levels=[2, 2], focal_windows=[3, 3],
               num_labels=10)


@_register("hiera", hf=True)
def hiera():
    # mask-unit attention with query pooling between stages
    return _hf("HieraConfig", "HieraForImageClassification", _image,
               image_size=[32, 32], patch_size=[3, 3], patch_stride=[2, 2], patch_padding=[1, 1], embed_dim=16,
               num_heads=[1, 2], depths=[1, 1], query_stride=[2, 2], masked_unit_size=[4, 4], num_query_pool=1,
               num_labels=10)


@_register("convnext", hf=True)
def convnext():
    return _hf("ConvNextConfig", "ConvNextForImageClassification", _image,
               num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=10)


@_register("convnextv2", hf=True)
def convnextv2():
    # global response normalisation (GRN) parameters used directly in forward
    return _hf("ConvNextV2Config", "ConvNextV2ForImageClassification", _image,
               num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=10)


@_register("poolformer", hf=True)
def poolformer():
    return _hf("PoolFormerConfig", "PoolFormerForImageClassification", _image,
               hidden_sizes=[16, 32], depths=[1, 1], num_encoder_blocks=2, patch_sizes=[7, 3], strides=[4, 2],
               padding=[2, 1], mlp_ratio=2.0, num_labels=10)


@_register("resnet", hf=True)
def resnet():
    return _hf("ResNetConfig", "ResNetForImageClassification", _image,
               embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="bottleneck", num_labels=10)


@_register("bit", hf=True)
def bit():
    # weight-standardised convolutions, GroupNorm, pre-activation bottlenecks
    return _hf("BitConfig", "BitForImageClassification", _image,
               embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="preactivation", num_groups=8,
               num_labels=10)


@_register("regnet", hf=True)
def regnet():
    return _hf("RegNetConfig", "RegNetForImageClassification", _image,
               embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], groups_width=8, layer_type="y",
               num_labels=10)


@_register("mobilenet_v1", hf=True)
def mobilenet_v1():
    return _hf("MobileNetV1Config", "MobileNetV1ForImageClassification", _image,
               image_size=32, depth_multiplier=0.125, min_depth=8, num_labels=10)


@_register("mobilenet_v2", hf=True)
def mobilenet_v2():
    # inverted residuals (expand 6×, depthwise, linear bottleneck), TF "same" padding
    return _hf("MobileNetV2Config", "MobileNetV2ForImageClassification", _image,
               image_size=32, depth_multiplier=0.1, min_depth=8, finegrained_output=False, num_labels=10)


@_register("mobilevit", hf=True)
def mobilevit():
    return _hf("MobileViTConfig", "MobileViTForImageClassification", _image,
               image_size=32, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 48],
               num_attention_heads=2, num_labels=10)


@_register("efficientnet", hf=True)
def efficientnet():
    # depthwise MBConv blocks with squeeze-and-excitation, scaled down to 0.1 width
    return _hf("EfficientNetConfig", "EfficientNetForImageClassification", _image,
               image_size=32, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=128, num_labels=10)


@_register("wav2vec2", hf=True)
def wav2vec2():
    # 1-D conv feature encoder (GroupNorm in its first layer), convolutional positional embedding, transformer
    return _hf("Wav2Vec2Config", "Wav2Vec2ForSequenceClassification", lambda: torch.randn(BATCH, 400),
               hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=4,
               num_conv_pos_embedding_groups=4, classifier_proj_size=16, num_labels=3)


@_register("hubert", hf=True)
def hubert():
    return _hf("HubertConfig", "HubertForSequenceClassification", lambda: torch.randn(BATCH, 400),
               hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=4,
               num_conv_pos_embedding_groups=4, classifier_proj_size=16, num_labels=3)


@_register("wavlm", hf=True)
def wavlm():
    # gated relative position bias in attention
    return _hf("WavLMConfig", "WavLMForSequenceClassification", lambda: torch.randn(BATCH, 400),
               hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=4,
               num_conv_pos_embedding_groups=4, classifier_proj_size=16, num_labels=3, num_buckets=32,
               max_bucket_distance=64)


@_register("whisper_encoder", hf=True)
def whisper_encoder():
    # WhisperForAudioClassification: the encoder (two Conv1d, sinusoidal positions) + a projection and classifier
    return _hf("WhisperConfig", "WhisperForAudioClassification", lambda: torch.randn(BATCH, 16, 16),
               vocab_size=VOCAB, num_mel_bins=16, d_model=32, encoder_layers=2, decoder_layers=1,
               encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
               max_source_positions=8, max_target_positions=8, classifier_proj_size=16, num_labels=3,
               pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=0)


# ---------------------------------------------------------------------------------------------
# Hand-written models
# ---------------------------------------------------------------------------------------------

def _hand(model_cls, inputs, *args, **kwargs) -> Case:
    torch.manual_seed(0)
    model = model_cls(*args, **kwargs).eval()
    return Case(model, inputs() if callable(inputs) else inputs)


def _conv_bn(cin, cout, k=3, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class LeNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 32)
        self.fc3 = nn.Linear(32, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


@_register("lenet")
def lenet():
    return _hand(LeNet, lambda: torch.randn(BATCH, 1, 28, 28))


class VGG(nn.Module):
    def __init__(self, widths=(16, 32, 32, 64), num_classes=10):
        super().__init__()
        layers, cin = [], 3
        for w in widths:
            layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(cin * 2 * 2, 64), nn.ReLU(inplace=True), nn.Dropout(),
                                        nn.Linear(64, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = x.view(x.size(0), -1)
        return self.classifier(x)


@_register("vgg")
def vgg():
    return _hand(VGG, _image)


class AlexNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 5, stride=2, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(32 * 2 * 2, 64), nn.ReLU(inplace=True),
                                        nn.Linear(64, num_classes))

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@_register("alexnet")
def alexnet():
    return _hand(AlexNet, _image)


class UNet(nn.Module):
    """Two-level U-Net: ConvTranspose2d upsampling, encoder features joined by ``torch.cat``."""

    def __init__(self, cin=3, classes=2, w=8):
        super().__init__()
        double = lambda a, b: nn.Sequential(_conv_bn(a, b), _conv_bn(b, b))
        self.enc1, self.enc2, self.mid = double(cin, w), double(w, 2 * w), double(2 * w, 4 * w)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = double(4 * w, 2 * w)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec1 = double(2 * w, w)
        self.head = nn.Conv2d(w, classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(d1)


@_register("unet")
def unet():
    return _hand(UNet, _image)


class ResNeXtBlock(nn.Module):
    def __init__(self, cin, cout, width=32, groups=4, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)  # grouped, not depthwise
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNeXt(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = _conv_bn(3, 32)
        self.layer1 = ResNeXtBlock(32, 64, stride=2)
        self.layer2 = ResNeXtBlock(64, 64)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@_register("resnext")
def resnext():
    return _hand(ResNeXt, _image)


def channel_shuffle(x, groups):
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNet v1 unit: grouped 1×1 conv, channel shuffle, depthwise 3×3, grouped 1×1 conv, residual."""

    def __init__(self, channels, groups=2):
        super().__init__()
        self.groups = groups
        mid = channels // 2
        self.gconv1 = nn.Conv2d(channels, mid, 1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.dwconv = nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.gconv2 = nn.Conv2d(mid, channels, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = F.relu(self.bn1(self.gconv1(x)))
        out = channel_shuffle(out, self.groups)
        out = self.bn2(self.dwconv(out))
        out = self.bn3(self.gconv2(out))
        return F.relu(x + out)


class ShuffleNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = _conv_bn(3, 32, stride=2)
        self.units = nn.Sequential(ShuffleUnit(32), ShuffleUnit(32))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.units(self.stem(x))
        return self.fc(x.mean([2, 3]))


@_register("shufflenet")
def shufflenet():
    return _hand(ShuffleNet, _image)


class SEBlock(nn.Module):
    def __init__(self, channels, reduction=4):
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, channels)

    def forward(self, x):
        b, c, _, _ = x.size()
        s = F.adaptive_avg_pool2d(x, 1).view(b, c)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s)))).view(b, c, 1, 1)
        return x * s


class SENet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = _conv_bn(3, 16, stride=2)
        self.conv2 = _conv_bn(16, 32, stride=2)
        self.se = SEBlock(32)
        self.conv3 = _conv_bn(32, 32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.conv3(self.se(self.conv2(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@_register("se_net")
def se_net():
    return _hand(SENet, _image)


class MobileNet(nn.Module):
    """MobileNet v1 style: depthwise 3×3 (groups = channels) then pointwise 1×1."""

    def __init__(self, num_classes=10):
        super().__init__()
        dw_sep = lambda cin, cout, s: nn.Sequential(_conv_bn(cin, cin, 3, s, groups=cin), _conv_bn(cin, cout, 1))
        self.features = nn.Sequential(_conv_bn(3, 16, stride=2), dw_sep(16, 32, 1), dw_sep(32, 64, 2))
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


@_register("mobilenet_dw")
def mobilenet_dw():
    return _hand(MobileNet, _image)


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, x):
        return torch.cat([x, self.conv(F.relu(self.norm(x)))], 1)


class DenseNet(nn.Module):
    def __init__(self, growth=8, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)
        c = 16
        layers = []
        for _ in range(3):
            layers.append(DenseLayer(c, growth))
            c += growth
        self.block1 = nn.Sequential(*layers)
        self.transition = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, c // 2, 1, bias=False),
                                        nn.AvgPool2d(2))
        c //= 2
        self.block2 = nn.Sequential(DenseLayer(c, growth), DenseLayer(c + growth, growth))
        c += 2 * growth
        self.norm = nn.BatchNorm2d(c)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.block2(self.transition(self.block1(self.stem(x))))
        x = F.relu(self.norm(x))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


@_register("densenet")
def densenet():
    return _hand(DenseNet, _image)


# --- skeleton graph convolutions (input N, C, T, V: 2 samples, 3 coordinates, 8 frames, 5 joints) ---

def skeleton_adjacency(num_joints=5, edges=((0, 1), (1, 2), (2, 3), (1, 4))):
    """Spatial partitioning (identity, inward, outward), each column-normalised: (3, V, V)."""
    inward = torch.zeros(num_joints, num_joints)
    for child, parent in edges:
        inward[child, parent] = 1.0
    outward = inward.t().clone()

    def norm(a):
        deg = a.sum(0)
        return a / torch.where(deg > 0, deg, torch.ones_like(deg))
    return torch.stack([torch.eye(num_joints), norm(inward), norm(outward)])


def _skeleton():
    return torch.randn(BATCH, 3, 8, 5)


class STGCNUnit(nn.Module):
    """PYSKL ``unit_gcn`` + ``unit_tcn``: 1×1 conv to K·C, einsum with the fixed adjacency, BN, ReLU, 9×1 conv."""

    def __init__(self, cin, cout, A, stride=1):
        super().__init__()
        self.register_buffer("A", A.clone())
        self.num_subsets = A.size(0)
        self.conv = nn.Conv2d(cin, cout * self.num_subsets, 1)
        self.bn = nn.BatchNorm2d(cout)
        self.tcn = nn.Sequential(nn.Conv2d(cout, cout, (9, 1), (stride, 1), (4, 0)), nn.BatchNorm2d(cout))
        if cin == cout and stride == 1:
            self.residual = nn.Identity()
        else:
            self.residual = nn.Sequential(nn.Conv2d(cin, cout, 1, (stride, 1)), nn.BatchNorm2d(cout))

    def forward(self, x):
        n, c, t, v = x.shape
        res = self.residual(x)
        y = self.conv(x)
        y = y.view(n, self.num_subsets, -1, t, v)
        y = torch.einsum("nkctv,kvw->nctw", y, self.A).contiguous()
        y = F.relu(self.bn(y))
        return F.relu(self.tcn(y) + res)


class STGCN(nn.Module):
    def __init__(self, num_classes=4):
        super().__init__()
        A = skeleton_adjacency()
        self.data_bn = nn.BatchNorm1d(3 * 5)
        self.layers = nn.ModuleList([STGCNUnit(3, 16, A), STGCNUnit(16, 32, A, stride=2)])
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        n, c, t, v = x.size()
        x = x.permute(0, 3, 1, 2).contiguous().view(n, v * c, t)
        x = self.data_bn(x)
        x = x.view(n, v, c, t).permute(0, 2, 3, 1).contiguous()
        for layer in self.layers:
            x = layer(x)
        return self.fc(x.mean([2, 3]))


@_register("stgcn")
def stgcn():
    return _hand(STGCN, _skeleton)


class AGCNUnit(nn.Module):
    """2s-AGCN ``unit_gcn``: A (fixed) + B (learned ``nn.Parameter``) + C_k = softmax(θ(x)ᵀ φ(x)).

    Written as in the reference implementation, including ``view(N, V, self.inter_c * T)``.
    """

    def __init__(self, cin, cout, A, coff_embedding=4):
        super().__init__()
        self.inter_c = cout // coff_embedding
        self.num_subset = A.size(0)
        self.register_buffer("A", A.clone())
        self.PA = nn.Parameter(torch.full_like(A, 1e-6))
        self.conv_a = nn.ModuleList(nn.Conv2d(cin, self.inter_c, 1) for _ in range(self.num_subset))
        self.conv_b = nn.ModuleList(nn.Conv2d(cin, self.inter_c, 1) for _ in range(self.num_subset))
        self.conv_d = nn.ModuleList(nn.Conv2d(cin, cout, 1) for _ in range(self.num_subset))
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout)) if cin != cout else nn.Identity()
        self.bn = nn.BatchNorm2d(cout)
        self.soft = nn.Softmax(-2)

    def forward(self, x):
        N, C, T, V = x.size()
        A = self.A + self.PA
        y = None
        for i in range(self.num_subset):
            A1 = self.conv_a[i](x).permute(0, 3, 1, 2).contiguous().view(N, V, self.inter_c * T)
            A2 = self.conv_b[i](x).view(N, self.inter_c * T, V)
            A1 = self.soft(torch.matmul(A1, A2) / A1.size(-1))  # N V V
            A1 = A1 + A[i]
            A2 = x.view(N, C * T, V)
            z = self.conv_d[i](torch.matmul(A2, A1).view(N, C, T, V))
            y = z + y if y is not None else z
        y = self.bn(y)
        return F.relu(y + self.down(x))


class AGCN(nn.Module):
    def __init__(self, num_classes=4):
        super().__init__()
        A = skeleton_adjacency()
        self.gcn1 = AGCNUnit(3, 16, A)
        self.tcn1 = nn.Sequential(nn.Conv2d(16, 16, (9, 1), padding=(4, 0)), nn.BatchNorm2d(16), nn.ReLU())
        self.gcn2 = AGCNUnit(16, 32, A)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.gcn2(self.tcn1(self.gcn1(x)))
        return self.fc(x.mean([2, 3]))


@_register("agcn_2s")
def agcn_2s():
    return _hand(AGCN, _skeleton)


class CTRGC(nn.Module):
    """CTR-GCN channel-wise topology refinement: tanh(φ(x)_u − ψ(x)_v) → per-channel adjacency."""

    def __init__(self, cin, cout, rel_reduction=8):
        super().__init__()
        self.rel_channels = 8 if cin in (3, 9) else cin // rel_reduction
        self.conv1 = nn.Conv2d(cin, self.rel_channels, 1)
        self.conv2 = nn.Conv2d(cin, self.rel_channels, 1)
        self.conv3 = nn.Conv2d(cin, cout, 1)
        self.conv4 = nn.Conv2d(self.rel_channels, cout, 1)
        self.tanh = nn.Tanh()

    def forward(self, x, A, alpha):
        x1, x2, x3 = self.conv1(x).mean(-2), self.conv2(x).mean(-2), self.conv3(x)
        x1 = self.tanh(x1.unsqueeze(-1) - x2.unsqueeze(-2))
        x1 = self.conv4(x1) * alpha + A.unsqueeze(0).unsqueeze(0)  # N, C, V, V
        return torch.einsum("ncuv,nctv->nctu", x1, x3)


class CTRGCNUnit(nn.Module):
    def __init__(self, cin, cout, A):
        super().__init__()
        self.num_subset = A.size(0)
        self.convs = nn.ModuleList(CTRGC(cin, cout) for _ in range(self.num_subset))
        self.PA = nn.Parameter(A.clone())  # learned topology, initialised from the skeleton
        self.alpha = nn.Parameter(torch.full((1,), 0.5))
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout)) if cin != cout else nn.Identity()
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        y = None
        for i in range(self.num_subset):
            z = self.convs[i](x, self.PA[i], self.alpha)
            y = z + y if y is not None else z
        return F.relu(self.bn(y) + self.down(x))


class CTRGCN(nn.Module):
    def __init__(self, num_classes=4):
        super().__init__()
        A = skeleton_adjacency()
        self.gcn1 = CTRGCNUnit(3, 16, A)
        self.tcn1 = nn.Sequential(nn.Conv2d(16, 16, (9, 1), padding=(4, 0)), nn.BatchNorm2d(16), nn.ReLU())
        self.gcn2 = CTRGCNUnit(16, 32, A)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.gcn2(self.tcn1(self.gcn1(x)))
        return self.fc(x.mean([2, 3]))


@_register("ctrgcn")
def ctrgcn():
    return _hand(CTRGCN, _skeleton)


# --- attention ---

class TimmAttention(nn.Module):
    """timm-style attention: fused qkv Linear, ``reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)``."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class ViTBlock(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=2, init_values=0.1):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TimmAttention(dim, num_heads)
        self.gamma1 = nn.Parameter(init_values * torch.ones(dim))  # layer scale
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))
        self.gamma2 = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x):
        x = x + self.gamma1 * self.attn(self.norm1(x))
        return x + self.gamma2 * self.mlp(self.norm2(x))


class HandViT(nn.Module):
    def __init__(self, dim=32, depth=2, num_heads=4, patch=8, image=32, num_classes=10):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(ViTBlock(dim, num_heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # B, N, C
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.blocks(x + self.pos_embed)
        return self.head(self.norm(x)[:, 0])


@_register("vit_hand")
def vit_hand():
    return _hand(HandViT, _image)


class SDPAAttention(nn.Module):
    """Separate q/k/v Linear layers, ``view(B, N, heads, head_dim)``, ``F.scaled_dot_product_attention``."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, _ = x.shape
        q = self.q_proj(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(y.transpose(1, 2).reshape(B, N, -1))


class SDPAClassifier(nn.Module):
    def __init__(self, dim=32, num_heads=4, num_classes=3):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SDPAAttention(dim, num_heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, ids):
        x = self.embed(ids)
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return self.classifier(x.mean(1))


def _ids():
    return torch.randint(0, VOCAB, (BATCH, SEQ))


@_register("sdpa_attention")
def sdpa_attention():
    return _hand(SDPAClassifier, _ids)


class TorchEncoder(nn.Module):
    """``nn.TransformerEncoder`` of two ``nn.TransformerEncoderLayer`` (batch_first), learned positions."""

    def __init__(self, dim=32, num_heads=4, num_classes=3):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.pos = nn.Parameter(torch.randn(1, SEQ, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, num_heads, dim_feedforward=64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, ids):
        x = self.encoder(self.embed(ids) + self.pos)
        return self.classifier(x.mean(1))


@_register("torch_encoder")
def torch_encoder():
    return _hand(TorchEncoder, _ids)


class MHABlock(nn.Module):
    """Post-norm transformer block written with ``nn.MultiheadAttention`` and a key padding mask."""

    def __init__(self, dim=32, num_heads=4, num_classes=3):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, dim))
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, ids, mask):
        x = self.embed(ids)
        a, _ = self.attn(x, x, x, key_padding_mask=mask == 0, need_weights=False)
        x = self.norm1(x + a)
        x = self.norm2(x + self.ffn(x))
        return self.classifier(x[:, 0])


@_register("mha_block")
def mha_block():
    def inputs():
        t = _text(False)
        return t["input_ids"], t["attention_mask"]
    return _hand(MHABlock, inputs)


# --- recurrent ---

class GRUTagger(nn.Module):
    def __init__(self, tags=5):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.gru = nn.GRU(16, 32, batch_first=True)
        self.out = nn.Linear(32, tags)

    def forward(self, ids):
        h, _ = self.gru(self.embed(ids))
        return self.out(h)  # a tag per token


@_register("gru_tagger")
def gru_tagger():
    return _hand(GRUTagger, _ids)


class LSTMTagger(nn.Module):
    def __init__(self, tags=5):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.lstm = nn.LSTM(16, 32, num_layers=2, batch_first=True)
        self.out = nn.Linear(32, tags)

    def forward(self, ids):
        h, _ = self.lstm(self.embed(ids))
        return self.out(h)


@_register("lstm_tagger")
def lstm_tagger():
    return _hand(LSTMTagger, _ids)


class BiLSTMClassifier(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.lstm = nn.LSTM(16, 32, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * 32, num_classes)

    def forward(self, ids):
        _, (h, _) = self.lstm(self.embed(ids))
        return self.fc(torch.cat([h[-2], h[-1]], dim=1))  # last forward and backward states


@_register("bilstm_classifier")
def bilstm_classifier():
    return _hand(BiLSTMClassifier, _ids)


# --- several inputs / outputs ---

class TwoBranch(nn.Module):
    """An image branch and a feature-vector branch, concatenated before the classifier."""

    def __init__(self, features=12, num_classes=5):
        super().__init__()
        self.cnn = nn.Sequential(_conv_bn(3, 16, stride=2), _conv_bn(16, 32, stride=2), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten())
        self.mlp = nn.Sequential(nn.Linear(features, 24), nn.ReLU())
        self.head = nn.Linear(32 + 24, num_classes)

    def forward(self, image, features):
        return self.head(torch.cat([self.cnn(image), self.mlp(features)], dim=1))


@_register("two_inputs")
def two_inputs():
    return _hand(TwoBranch, lambda: (_image(), torch.randn(BATCH, 12)))


@_register("dict_inputs")
def dict_inputs():
    return _hand(TwoBranch, lambda: {"image": _image(), "features": torch.randn(BATCH, 12)})


class DictOutput(nn.Module):
    """Returns ``{"logits": ..., "embedding": ...}``."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.backbone = nn.Sequential(_conv_bn(3, 16, stride=2), _conv_bn(16, 32, stride=2), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten())
        self.proj = nn.Linear(32, 16)
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x):
        f = self.backbone(x)
        return {"logits": self.classifier(f), "embedding": F.normalize(self.proj(f), dim=1)}


@_register("dict_output")
def dict_output():
    return _hand(DictOutput, _image)


class TupleOutput(nn.Module):
    """Returns ``(logits, auxiliary logits, features)``; the auxiliary head reads an inner stage."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stage1 = _conv_bn(3, 16, stride=2)
        self.stage2 = _conv_bn(16, 32, stride=2)
        self.aux = nn.Linear(16, num_classes)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        a = self.stage1(x)
        f = self.stage2(a).mean([2, 3])
        return self.fc(f), self.aux(a.mean([2, 3])), f


@_register("tuple_output")
def tuple_output():
    return _hand(TupleOutput, _image)


# --- other layer types ---

class Audio1d(nn.Module):
    def __init__(self, num_classes=6):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 16, 9, stride=4, padding=4), nn.BatchNorm1d(16), nn.ReLU(),
            nn.Conv1d(16, 32, 5, stride=2, padding=2), nn.BatchNorm1d(32), nn.ReLU(),
            nn.Conv1d(32, 32, 3, padding=2, dilation=2), nn.BatchNorm1d(32), nn.ReLU(),
            nn.AdaptiveAvgPool1d(1))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, wave):
        return self.fc(self.features(wave).squeeze(-1))


@_register("conv1d_audio")
def conv1d_audio():
    return _hand(Audio1d, lambda: torch.randn(BATCH, 1, 256))


class ConvNeXtBlock(nn.Module):
    """dwconv 7×7 → channels-last LayerNorm → Linear 4× → GELU → Linear → layer scale → residual."""

    def __init__(self, dim, init_values=0.1):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x):
        shortcut = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        x = self.gamma * x
        x = x.permute(0, 3, 1, 2)
        return shortcut + x


class HandConvNeXt(nn.Module):
    def __init__(self, dim=16, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, 4)
        self.blocks = nn.Sequential(ConvNeXtBlock(dim), ConvNeXtBlock(dim))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(self.norm(x.mean([-2, -1])))


@_register("convnext_hand")
def convnext_hand():
    return _hand(HandConvNeXt, _image)


class MixerBlock(nn.Module):
    def __init__(self, tokens, dim, token_hidden=32, channel_hidden=64):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, token_hidden), nn.GELU(), nn.Linear(token_hidden, tokens))
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp = nn.Sequential(nn.Linear(dim, channel_hidden), nn.GELU(), nn.Linear(channel_hidden, dim))

    def forward(self, x):  # x: B, tokens, dim
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class MLPMixer(nn.Module):
    def __init__(self, dim=32, patch=8, image=32, num_classes=10):
        super().__init__()
        tokens = (image // patch) ** 2
        self.stem = nn.Conv2d(3, dim, patch, patch)
        self.blocks = nn.Sequential(MixerBlock(tokens, dim), MixerBlock(tokens, dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2)
        x = self.norm(self.blocks(x))
        return self.head(x.mean(1))


@_register("mlp_mixer")
def mlp_mixer():
    return _hand(MLPMixer, _image)


class NormCNN(nn.Module):
    """conv → norm → ReLU ×3, global pool, Linear; ``norm`` builds the normalisation layer for c channels."""

    def __init__(self, norm, num_classes=10):
        super().__init__()
        layers, cin = [], 3
        for c in (16, 32, 32):
            layers += [nn.Conv2d(cin, c, 3, stride=2, padding=1), norm(c), nn.ReLU()]
            cin = c
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean([2, 3]))


@_register("groupnorm_cnn")
def groupnorm_cnn():
    return _hand(NormCNN, _image, lambda c: nn.GroupNorm(4, c))


@_register("instancenorm_cnn")
def instancenorm_cnn():
    return _hand(NormCNN, _image, lambda c: nn.InstanceNorm2d(c, affine=True))


class Conv3dNet(nn.Module):
    def __init__(self, num_classes=5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(3, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(), nn.MaxPool3d((1, 2, 2)),
            nn.Conv3d(8, 16, 3, stride=(1, 2, 2), padding=1), nn.BatchNorm3d(16), nn.ReLU(), nn.AdaptiveAvgPool3d(1))
        self.fc = nn.Linear(16, num_classes)

    def forward(self, clip):  # N, C, T, H, W
        return self.fc(self.features(clip).flatten(1))


@_register("conv3d")
def conv3d():
    return _hand(Conv3dNet, lambda: torch.randn(BATCH, 3, 4, 16, 16))


# Families tried and left out (transformers 5.24, CPU):
# - DiNAT (DinatForImageClassification): ImportError, needs the `natten` package (neighbourhood attention kernels).
# Built and run but left out as redundant with the families above: YOLOS (ViT + detection tokens), Starcoder2
# (Llama-like). Needed workarounds (kept): MPNet must keep 32 relative-attention buckets (its bucketing ignores the
# config and indexes out of range with fewer); CLIP/SigLIP image classification take the joint config
# (CLIPConfig / SiglipConfig) and build only the vision tower; LeViT's config wants an int drop_path_rate; CvT's
# second stage needs 2 layers; EfficientNet's hidden_dim must equal round_filters(1280) (128 at width 0.1).
