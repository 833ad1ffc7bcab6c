"""Routing capture from tiny, randomly initialized Hugging Face MoE models (built in-process)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
hf = pytest.importorskip("transformers")


from conftest import TINY_MOE, TINY_MOE_FAMILIES
from moeplace.calibrate.capture import capture_routing, find_routers, trace_meta
from moeplace.calibrate.corpus import Document
from moeplace.calibrate.trace_io import load_trace, trace_writer
from moeplace.errors import MoeplaceError

EXPECTED_LAYERS = {"qwen2_moe": (0, 2), "deepseek_v2": (1, 2), "deepseek_v3": (1, 2)}


def tiny_model(family):
    torch.manual_seed(0)
    model = hf.AutoModel.from_config(TINY_MOE_FAMILIES[family]()).eval()
    if family == "deepseek_v3":  # make the correction bias decide, as it does in the real model
        for _, router in find_routers(model):
            router.e_score_correction_bias.copy_(torch.randn(8) * 3)
    return model


class ExpertsOracle:
    """Records what each MoE block's experts were actually given, and each batch's attention mask."""

    def __init__(self, model):
        self.used, self.masks = {}, []
        for layer_id, _ in find_routers(model):
            experts = model.layers[layer_id].mlp.experts
            experts.register_forward_pre_hook(self._experts(layer_id), with_kwargs=True)
        model.register_forward_pre_hook(
            lambda m, a, kw: self.masks.append(kw["attention_mask"].bool()), with_kwargs=True
        )

    def _experts(self, layer_id):
        def hook(module, args, kwargs):
            indices = kwargs.get("top_k_index", kwargs.get("router_indices"))
            indices = args[1] if indices is None else indices
            self.used.setdefault(layer_id, []).append(indices.clone())

        return hook

    def valid_tokens(self, layer_id):
        """Ids the experts used for real (non-padding) tokens, in processing order: [T, k]."""
        rows = [
            ids.view(*mask.shape, -1)[mask] for ids, mask in zip(self.used[layer_id], self.masks, strict=True)
        ]
        return torch.cat(rows).numpy()


@pytest.mark.parametrize("family", list(TINY_MOE_FAMILIES))
def test_captured_ids_are_what_the_experts_received(tmp_path, family):
    model = tiny_model(family)
    oracle = ExpertsOracle(model)
    rng = np.random.default_rng(1)
    lengths = [7, 3, 12, 1, 9]  # max_length 5: long documents become windows; batches of 3 pad
    token_ids = [rng.integers(0, 128, n) for n in lengths]
    documents = [Document("", f"doc{i}") for i in range(len(lengths))]
    meta = trace_meta(model, family, ["test"], max_length=5)
    with trace_writer(tmp_path / "t", meta) as writer:
        capture_routing(model, documents, token_ids, writer, max_length=5, batch_size=3)
    trace = load_trace(tmp_path / "t")

    assert trace.meta.layer_ids == EXPECTED_LAYERS.get(family, (0, 1, 2))
    assert (trace.meta.num_experts, trace.meta.top_k) == (8, 2)
    np.testing.assert_array_equal(np.diff(trace.doc_offsets), lengths)
    assert list(trace.doc_labels) == [d.label for d in documents]
    for position, layer_id in enumerate(trace.meta.layer_ids):
        np.testing.assert_array_equal(trace.topk_ids[:, position, :], oracle.valid_tokens(layer_id))


def test_deepseek_v3_capture_is_not_top_k_of_raw_logits():
    model = tiny_model("deepseek_v3")
    _, router = find_routers(model)[0]
    seen = {}
    router.register_forward_hook(lambda m, i, out: seen.update(logits=out[0], chosen=out[-1]))
    with torch.no_grad():
        model(input_ids=torch.randint(0, 128, (2, 16)))
    naive = torch.topk(seen["logits"], 2, dim=-1).indices.sort(-1).values
    assert not torch.equal(naive, seen["chosen"].sort(-1).values)  # bias + groups change the choice


def test_dense_model_has_no_router():
    model = hf.AutoModel.from_config(hf.LlamaConfig(**TINY_MOE))
    with pytest.raises(MoeplaceError, match=r"no MoE router found.*layers\.<i>\.mlp\.gate"):
        find_routers(model)


def test_max_tokens_cuts_the_trace(tmp_path):
    model = tiny_model("olmoe")
    token_ids = [np.arange(10) % 128, np.arange(10) % 128, np.arange(10) % 128]
    documents = [Document("", "a"), Document("", "b"), Document("", "c")]
    with trace_writer(tmp_path / "t.npz", trace_meta(model, "olmoe", ["x"], 8)) as writer:
        capture_routing(model, documents, token_ids, writer, max_length=8, batch_size=2, max_tokens=15)
    trace = load_trace(tmp_path / "t.npz")
    np.testing.assert_array_equal(np.diff(trace.doc_offsets), [10, 5])
    assert list(trace.doc_labels) == ["a", "b"]
