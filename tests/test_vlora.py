"""VLoRA behaviour: zero-B identity, per-sample updates equal merged weights, cached generation, checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from viral.vlora import VLoRAConfig, VLoRAModel
from viral.vlora.injection import decoder_layers

VOCAB = 64


def tiny_llm(gqa: bool, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2 if gqa else 4,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=None,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config).eval()


def tiny_vision_tower(seed: int = 1) -> CLIPVisionModel:
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    return CLIPVisionModel(config).eval()


def tiny_vlora(llm: nn.Module, skip_layers: int = 2, types: str = "qkvom") -> VLoRAModel:
    torch.manual_seed(2)
    config = VLoRAConfig(rank=4, alpha=8, hidden_size=32, depth=1, num_heads=2, skip_layers=skip_layers, types=types)
    return VLoRAModel(llm, tiny_vision_tower(), config).eval()


def randomise_b(model: VLoRAModel, seed: int = 3) -> None:
    """Give B non-zero values so that images change the LLM."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for b in model.generator.lora_B.values():
            b.normal_(0, 0.5)


def batch(seed: int = 4, size: int = 3, length: int = 9):
    torch.manual_seed(seed)
    input_ids = torch.randint(1, VOCAB, (size, length))
    pixel_values = torch.randn(size, 3, 32, 32)
    return input_ids, pixel_values


def test_layer_schedule_defaults():
    # 32 layers, skip 4: one update every 4th layer, the first at 0-based layer 3.
    from viral.vlora import updated_layers

    assert updated_layers(32, 4) == [3, 7, 11, 15, 19, 23, 27, 31]
    model = tiny_vlora(tiny_llm(gqa=True), skip_layers=4)
    assert model.update_layers == [3]
    dims = {t: tuple(b.shape[1:]) for t, b in model.generator.lora_B.items()}
    # GQA: k and v write num_key_value_heads × head_dim = 2 × 16.
    assert dims == {"q": (64, 4), "k": (32, 4), "v": (32, 4), "o": (64, 4), "m": (64, 4)}


def test_zero_b_is_the_plain_llm_and_one_step_changes_only_image_samples():
    llm = tiny_llm(gqa=True)
    plain = copy.deepcopy(llm)
    model = tiny_vlora(llm)
    input_ids, pixel_values = batch()
    has_image = torch.tensor([True, False, True])

    with torch.no_grad():
        before = model(input_ids, pixel_values=pixel_values, has_image=has_image).logits  # [B, S, V]
        reference = plain(input_ids).logits
    assert torch.equal(before, reference)

    # Pre-training stage: the generator alone learns; one step on a mixed batch.
    model.llm.requires_grad_(False)
    optimizer = torch.optim.AdamW(model.generator.parameters(), lr=1e-2)
    loss = model(input_ids, pixel_values=pixel_values, has_image=has_image, labels=input_ids).loss
    loss.backward()
    optimizer.step()

    with torch.no_grad():
        after = model(input_ids, pixel_values=pixel_values, has_image=has_image).logits
    assert torch.equal(after[1], before[1])  # text-only sample: unchanged
    for row in (0, 2):
        assert not torch.allclose(after[row], before[row], atol=1e-6)


def test_text_only_batch_skips_the_generator(monkeypatch):
    model = tiny_vlora(tiny_llm(gqa=False))
    randomise_b(model)
    input_ids, pixel_values = batch()

    def fail(*args, **kwargs):
        raise AssertionError("the generator ran for a text-only batch")

    monkeypatch.setattr(model.generator, "forward", fail)
    with torch.no_grad():
        out = model(input_ids, pixel_values=pixel_values, has_image=torch.zeros(3, dtype=torch.bool)).logits
        plain = model.llm(input_ids).logits
    assert torch.equal(out, plain)


class _ParallelLowRank(nn.Module):
    """Reference for type m: the MLP plus an explicit dense map x ↦ x Wᵀ with W = scale·(A Bᵀ)ᵀ."""

    def __init__(self, mlp: nn.Module, weight: torch.Tensor):
        super().__init__()
        self.mlp = mlp
        self.extra = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.extra.weight.data.copy_(weight)

    def forward(self, x):
        return self.mlp(x) + self.extra(x)


def merged_copy(llm: nn.Module, model: VLoRAModel, a: dict[str, torch.Tensor], b: int) -> nn.Module:
    """A copy of the plain LLM with sample b's updates merged into its weights: W + scale·(A_b Bᵀ)ᵀ."""
    merged = copy.deepcopy(llm)
    scale = model.generator.scale
    layers = decoder_layers(merged)
    paths = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj"}
    with torch.no_grad():
        for j, index in enumerate(model.update_layers):
            for t, factor in a.items():
                delta = scale * (factor[b, j] @ model.generator.lora_B[t][j].T).T  # [d_out, d_in]
                if t == "m":
                    layers[index].mlp = _ParallelLowRank(layers[index].mlp, delta)
                else:
                    layers[index].get_submodule(paths[t]).weight += delta
    return merged


@pytest.mark.parametrize("gqa", [False, True], ids=["mha", "gqa"])
@pytest.mark.parametrize("types", ["q", "k", "v", "o", "m", "qkvom"])
def test_batched_update_equals_merged_weights(types, gqa):
    llm = tiny_llm(gqa=gqa)
    plain = copy.deepcopy(llm)
    model = tiny_vlora(llm, skip_layers=2, types=types)  # updates layers 1 and 3
    randomise_b(model)
    input_ids, pixel_values = batch()
    has_image = torch.tensor([True, False, True])

    with torch.no_grad():
        batched = model(input_ids, pixel_values=pixel_values, has_image=has_image).logits  # [B, S, V]
        a = model.perceptual_weights(pixel_values)  # {t: [B, k, d_in, r]}, one per row here
        assert not torch.allclose(batched[0], plain(input_ids[:1]).logits[0], atol=1e-4)  # the update matters
        for row in (0, 2):
            expected = merged_copy(plain, model, a, row)(input_ids[row : row + 1]).logits[0]
            torch.testing.assert_close(batched[row], expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batched[1], plain(input_ids[1:2]).logits[0], atol=1e-6, rtol=0)


def capture_position_ids(llm: nn.Module, store: list) -> torch.utils.hooks.RemovableHandle:
    def hook(module, args, kwargs):
        store.append(kwargs["position_ids"].detach().clone())

    return decoder_layers(llm)[0].register_forward_pre_hook(hook, with_kwargs=True)


def test_kv_cache_generation_matches_no_cache_and_positions_are_consistent():
    model = tiny_vlora(tiny_llm(gqa=True))
    randomise_b(model)
    input_ids, pixel_values = batch(length=6)
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, :2] = 0  # left padding on a text-only row
    attention_mask[1, :2] = 0
    input_ids[2, :1] = 0
    attention_mask[2, :1] = 0
    has_image = torch.tensor([True, False, True])
    kwargs = dict(attention_mask=attention_mask, pixel_values=pixel_values, has_image=has_image)
    kwargs.update(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)

    cached_positions, full_positions = [], []
    handle = capture_position_ids(model.llm, cached_positions)
    cached = model.generate(input_ids, use_cache=True, **kwargs)
    handle.remove()
    handle = capture_position_ids(model.llm, full_positions)
    uncached = model.generate(input_ids, use_cache=False, **kwargs)
    handle.remove()

    assert torch.equal(cached, uncached)
    # Prefill sees the prompt, then one token per step; their positions line up with the positions
    # the no-cache run gives the whole sequence at its last step.
    assert cached_positions[0].shape[-1] == input_ids.shape[1]
    assert all(p.shape[-1] == 1 for p in cached_positions[1:])
    stitched = torch.cat([p.expand(3, -1) for p in cached_positions], dim=-1)  # [B, S + new - 1]
    last_full = full_positions[-1].expand(3, -1)
    assert torch.equal(stitched, last_full)
    # The unpadded row counts 0, 1, 2, … with no shift between prefill and decoding.
    assert torch.equal(stitched[0], torch.arange(stitched.shape[1]))
    # Row 2 starts after one pad: its real tokens count from 0 too.
    assert torch.equal(stitched[2, 1:], torch.arange(stitched.shape[1] - 1))

    # The images steer generation: the same prompts without them decode differently.
    text_only = model.generate(input_ids, use_cache=True, **{**kwargs, "pixel_values": None})
    assert torch.equal(text_only[1], cached[1])
    assert not torch.equal(text_only[[0, 2]], cached[[0, 2]])


def test_save_and_load_round_trip(tmp_path):
    model = tiny_vlora(tiny_llm(gqa=True))
    randomise_b(model)
    input_ids, pixel_values = batch()
    model.save_pretrained(tmp_path)
    assert VLoRAModel.is_checkpoint(tmp_path)
    loaded = VLoRAModel.from_pretrained(tmp_path).eval()
    assert loaded.vlora_config == model.vlora_config
    with torch.no_grad():
        expected = model(input_ids, pixel_values=pixel_values).logits
        got = loaded(input_ids, pixel_values=pixel_values).logits
    torch.testing.assert_close(got, expected)
    # The LLM part is a plain transformers checkpoint.
    plain = LlamaForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids).logits, model.llm(input_ids).logits)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="vlora_types"):
        tiny_vlora(tiny_llm(gqa=False), types="qx")
    with pytest.raises(ValueError, match="exceeds"):
        tiny_vlora(tiny_llm(gqa=False), skip_layers=5)
    model = tiny_vlora(tiny_llm(gqa=False))
    input_ids, pixel_values = batch()
    with pytest.raises(ValueError, match="pixel_values has 2 images"):
        model(input_ids, pixel_values=pixel_values[:2], has_image=torch.tensor([True, False, False]))


def test_gradient_checkpointing_recomputes_with_the_same_updates():
    grads = []
    for checkpointing in (False, True):
        model = tiny_vlora(tiny_llm(gqa=True))
        randomise_b(model)
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        input_ids, pixel_values = batch()
        has_image = torch.tensor([True, False, True])
        model(input_ids, pixel_values=pixel_values, has_image=has_image, labels=input_ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    plain, checkpointed = grads
    assert plain.keys() == checkpointed.keys() and any(n.startswith("generator.stacks") for n in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-5, rtol=1e-4, msg=name)
