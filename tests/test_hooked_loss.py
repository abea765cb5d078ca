"""The alignment head run (forward and backward) inside the layer hooks gives today's losses and gradients.

The reference is the plain formulation: capture the target layers' image states, run the head after the
forward pass, L = L_LM + lambda * mean_l L_VRA,l, one backward. Compared to 1e-6 on every trainable
parameter, with separate and shared projectors, layers 0 / middle / L, cosine and relation losses,
encoder and teacher targets, gradient checkpointing, gradient accumulation and text-only samples.
"""

import pytest
import torch
from PIL import Image

from viral.align import capture_layers
from viral.align.losses import get_alignment_loss
from viral.align.projector import AlignmentHead
from viral.infer import Predictor
from viral.train import ViralTrainingModel


def make_batches(predictor, count: int, text_only: set[int] = frozenset()):
    """`count` micro-batches of 3 samples (labels on the text); sample 1 of batch i is text-only if i in text_only."""
    colours = ["red", "blue", "green", "yellow", "purple", "orange"]
    batches = []
    for i in range(count):
        images = [Image.new("RGB", (64, 48 + 8 * k), colours[(i + k) % 6]) for k in range(3)]
        if i in text_only:
            images[1] = None
        inputs = predictor.prepare(images, ["How many circles ?", "Is there a square ?", "What colour is it ?"])
        labels = inputs["input_ids"].clone()
        labels[inputs["attention_mask"] == 0] = -100
        labels[inputs["input_ids"] == predictor.model.config.image_token_id] = -100
        inputs["labels"] = labels
        batches.append(inputs)
    return batches


def setup(tiny_llava_path, layers, shared, checkpointing):
    predictor = Predictor.from_pretrained(tiny_llava_path, device="cpu")
    llava = predictor.model.train()
    llava.config.text_config.use_cache = False
    for module in llava.modules():  # dropout off: both paths must see the same function
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    llava.model.vision_tower.requires_grad_(False)
    if checkpointing:
        llava.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(0)
    head = AlignmentHead(layers, llava.config.text_config.hidden_size, 24,
                         llava.config.vision_config.hidden_size, use_multiple_projectors=not shared)
    return predictor, llava, head


def reference_step(llava, head, batches, loss_name, weight, teachers):
    """Today's formulation: states captured, head after the forward, exact step means over micro-batches."""
    loss_fn = get_alignment_loss(loss_name)
    tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    images = sum(int((b["input_ids"] == llava.config.image_token_id).any(1).sum()) for b in batches)
    encoder = {}
    handle = llava.model.multi_modal_projector.register_forward_pre_hook(
        lambda module, args: encoder.__setitem__("z", args[0].detach()))
    losses = []
    for batch, teacher in zip(batches, teachers):
        mask = batch["input_ids"] == llava.config.image_token_id
        with capture_layers(llava, head.target_layers, mask) as capture:
            out = llava(**batch, num_items_in_batch=tokens)
        targets = teacher if teacher is not None else encoder["z"]
        projected = head(capture.states)
        vra = torch.stack([loss_fn(projected[layer], targets) for layer in head.target_layers]).mean()
        share = int(mask.any(1).sum()) / images
        loss = out.loss + weight * vra * share
        loss.backward()
        losses.append((float(out.loss.detach()), float(vra.detach())))
    handle.remove()
    return losses


def hooked_step(llava, head, batches, loss_name, weight, teachers):
    model = ViralTrainingModel(llava, llava, head, weight, loss_name)
    tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    images = sum(model.count_images(b) for b in batches)
    losses = []
    for batch, teacher in zip(batches, teachers):
        out = model(**batch, teacher_features=teacher, num_items_in_batch=tokens, num_images_in_batch=images)
        out["loss"].backward()
        lm = float(out["lm_sum"]) / tokens
        losses.append((lm, float(out["vra_sum"]) / int(out["vra_count"])))
    model.capture.remove()
    return losses


def grads(modules):
    return {f"{i}.{name}": p.grad.clone() for i, module in enumerate(modules)
            for name, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("layers,shared,loss_name,teacher,checkpointing,micro_batches,frozen_head", [
    ([0, 2, 4], False, "cosine", False, False, 1, False),
    ([1, 3], True, "relation", True, False, 2, False),
    ([2], False, "cosine", True, True, 2, False),
    ([0, 4], True, "cosine", False, True, 1, False),
    ([3], False, "cosine", True, False, 1, True),  # a head that does not train: only the LLM gets gradients
])
def test_hooked_head_matches_the_plain_formulation(tiny_llava_path, layers, shared, loss_name, teacher,
                                                   checkpointing, micro_batches, frozen_head):
    results = []
    for step in (reference_step, hooked_step):
        predictor, llava, head = setup(tiny_llava_path, layers, shared, checkpointing)
        head.requires_grad_(not frozen_head)
        batches = make_batches(predictor, micro_batches, text_only={micro_batches - 1})
        torch.manual_seed(1)
        images = [int((b["input_ids"] == llava.config.image_token_id).any(1).sum()) for b in batches]
        n = int((batches[0]["input_ids"][0] == llava.config.image_token_id).sum())
        teachers = [torch.randn(k, n, head.config["z_dim"]) if teacher else None for k in images]
        losses = step(llava, head, batches, loss_name, 0.5, teachers)
        results.append((losses, grads([llava, head])))
    (ref_losses, ref_grads), (hooked_losses, hooked_grads) = results
    # the reference's per-micro-batch L_LM is the share of the step mean; compare the summed step values
    assert sum(l for l, _ in hooked_losses) == pytest.approx(sum(l for l, _ in ref_losses), abs=1e-6)
    assert [v for _, v in hooked_losses] == pytest.approx([v for _, v in ref_losses], abs=1e-6)
    assert ref_grads.keys() == hooked_grads.keys()
    assert any(k.startswith("1.") for k in ref_grads) != frozen_head  # "1." = the head's parameters
    for name in ref_grads:
        torch.testing.assert_close(hooked_grads[name], ref_grads[name], rtol=0, atol=1e-6, msg=name)


def test_no_grad_forward_still_reports_the_loss_and_keeps_nothing(tiny_llava_path):
    predictor, llava, head = setup(tiny_llava_path, [2], False, False)
    [batch] = make_batches(predictor, 1)
    model = ViralTrainingModel(llava, llava, head, 0.5, "cosine")
    with torch.no_grad():
        out = model(**batch)
    assert float(out["vra_sum"]) != 0 and out["loss"].grad_fn is None
    assert all(p.grad is None for p in head.parameters())
