"""VISOR architecture, generation, training and policy invariants on tiny in-process reference models."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from visor_model.efficiency.accounting import visor_prefill_flops
from visor_model.efficiency.shapes import LLMShape
from visor_model.examples import Example
from visor_model.llava.checkpoints import LoadedCheckpoint
from visor_model.llava.runner import VisionLanguageRunner, prompt_ids
from visor_model.methods.base import FullTokens, check_fraction
from visor_model.methods.visor.layout import Layout
from visor_model.methods.visor.modeling import (
    CA,
    SA,
    TEXT,
    VisorConfig,
    VisorModel,
    choose_configuration,
)
from visor_model.reference import tasks
from visor_model.reference.models import ReferenceConfig, build_reference_model, build_tokenizer

# Two VISOR slots (CA 0 / SA 1, CA 3 / SA 4) need six LLM layers; the shipped reference has three.
SIX_LAYER_HOST = ReferenceConfig(family="llava_onevision", text_layers=6)


@pytest.fixture(scope="module")
def host():
    tokenizer = build_tokenizer(tasks.vocabulary())
    model, processor = build_reference_model(SIX_LAYER_HOST, tokenizer, seed=0)
    model.eval()
    loaded = LoadedCheckpoint(model, tokenizer, processor, "llava_onevision", None, "test", None, "")
    examples = []
    for task in ("synth_marker", "synth_shape", "synth_background"):
        examples += [Example(task, r["image"], r["question"], r["answer"])
                     for r in tasks.generate_split(task, "val", 4, seed=0)]
    return loaded, examples


def spliced(loaded, examples):
    runner = VisionLanguageRunner(loaded, FullTokens())
    pixels, sizes = runner.process_images([e.image for e in examples])
    prompts = [prompt_ids(loaded.tokenizer, loaded.model.config.image_token_id, e.question) for e in examples]
    _, kept = runner.visual_tokens(pixels, sizes, [str(i) for i in range(len(examples))])
    return runner.splice(prompts, kept)


def perturbed(model: VisorModel, seed: int = 1) -> VisorModel:
    """Non-zero gates and positional conv, so that the CA path matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.visor.cross.values():
            block.gate.fill_(0.7)
        if model.visor.pos_conv is not None:
            model.visor.pos_conv.weight.copy_(torch.randn(model.visor.pos_conv.weight.shape, generator=generator) * 0.1)
    return model


def test_all_sa_no_ca_equals_base_exactly(host):
    loaded, examples = host
    batch = spliced(loaded, examples[:6])
    assert len(set(batch.visual_mask.sum(1).tolist())) > 1  # different visual token counts, left padding
    model = loaded.model
    L = model.config.text_config.num_hidden_layers
    with torch.no_grad():
        base = model.lm_head(model.model.language_model(
            inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
            position_ids=batch.position_ids).last_hidden_state)
        visor = VisorModel(model, VisorConfig(n_layers=L, ca_layers=(), sa_candidates=tuple(range(L))))
        hidden, _ = visor.forward(batch, tuple(range(L)))
        assert torch.equal(model.lm_head(hidden), base)


def test_zero_gates_add_nothing(host):
    loaded, examples = host
    batch = spliced(loaded, examples[:4])
    L = 6
    with_ca = VisorModel(loaded.model, VisorConfig(n_layers=L))
    without = VisorModel(loaded.model, VisorConfig(n_layers=L, ca_layers=()))
    for active in with_ca.config.family():
        with torch.no_grad():
            a, layout = with_ca.text_logits(batch, active)
            b, _ = without.text_logits(batch, active)
        assert torch.equal(a[layout.text_valid], b[layout.text_valid])
    # and with open gates it does change the text states
    perturbed(with_ca)
    with torch.no_grad():
        a, layout = with_ca.text_logits(batch, ())
    assert not torch.allclose(a[layout.text_valid], b[layout.text_valid])


def test_layout_indexes_every_rows_text_and_visual_positions(host):
    loaded, examples = host
    batch = spliced(loaded, examples[:6])
    layout = Layout.build(batch.attention_mask, batch.position_ids, batch.visual_mask)
    real = batch.attention_mask.bool()
    Tt = layout.text_index.shape[1]
    assert len(set(layout.n_visual())) > 1  # rows of different lengths: the padding is exercised
    for b in range(len(real)):
        text = torch.nonzero(real[b] & ~batch.visual_mask[b]).squeeze(1)
        visual = torch.nonzero(real[b] & batch.visual_mask[b]).squeeze(1)
        assert torch.equal(layout.text_index[b, Tt - len(text):], text)  # left-padded
        assert torch.equal(layout.visual_index[b, : len(visual)], visual)  # right-padded
        assert layout.text_valid[b].sum() == len(text) and layout.text_valid[b, Tt - len(text):].all()
        assert layout.visual_valid[b].sum() == len(visual) and layout.visual_valid[b, : len(visual)].all()
        assert not layout.text_index[b, : Tt - len(text)].any() and not layout.visual_index[b, len(visual):].any()


def test_a_padded_batch_gives_each_row_its_own_logits(host):
    loaded, examples = host
    visor = perturbed(VisorModel(loaded.model, VisorConfig(n_layers=6)))
    batch = spliced(loaded, examples[:6])
    for active in visor.config.family():
        with torch.no_grad():
            together, layout = visor.text_logits(batch, active)
            for row in (0, 4):
                alone, alone_layout = visor.text_logits(spliced(loaded, examples[row : row + 1]), active)
                torch.testing.assert_close(together[row][layout.text_valid[row]], alone[0][alone_layout.text_valid[0]],
                                           rtol=1e-4, atol=1e-5)


def test_text_only_layers_see_text_length_tensors(host):
    loaded, examples = host
    batch = spliced(loaded, examples[:3])
    visor = VisorModel(loaded.model, VisorConfig(n_layers=6))
    active = visor.config.family()[1]
    roles = visor.config.roles(active)
    assert roles == (CA, TEXT, TEXT, CA, SA, TEXT)
    seen = {}
    hooks = [layer.register_forward_hook(lambda m, args, out, i=i: seen.__setitem__(i, args[0].shape[1]))
             for i, layer in enumerate(loaded.model.model.language_model.layers)]
    try:
        with torch.no_grad():
            _, layout = visor.forward(batch, active)
    finally:
        for h in hooks:
            h.remove()
    T, Tt = batch.inputs_embeds.shape[1], layout.text_valid.shape[1]
    assert Tt < T
    assert seen == {layer: (T if role == SA else Tt) for layer, role in enumerate(roles)}


def test_compute_grows_with_sa_layers(host):
    loaded, _ = host
    config = VisorConfig(n_layers=6)
    shape = LLMShape.from_config(loaded.model.config.text_config)
    costs = [visor_prefill_flops(shape, config, active, 150, 12).total for active in config.family()]
    assert costs == sorted(costs) and len(set(costs)) == len(costs)
    big = VisorConfig(n_layers=24)
    deep = dataclasses.replace(shape, n_layers=24)
    costs = [visor_prefill_flops(deep, big, active, 700, 30).total for active in big.family()]
    assert [len(a) for a in big.family()] == list(range(9)) and costs == sorted(costs)


def test_cached_equals_uncached_generation(host):
    loaded, examples = host
    batch = spliced(loaded, examples[:6])
    visor = perturbed(VisorModel(loaded.model, VisorConfig(n_layers=6)))
    eos = loaded.tokenizer.eos_token_id
    for active in visor.config.family():
        cached = visor.generate(batch, 5, eos, active=active)
        assert cached.token_ids == visor.generate(batch, 5, eos, active=active, use_cache=False).token_ids
        assert all(c == active for c in cached.configurations)
    visor.set_viable(visor.config.family())
    for tau in (0.0, 0.5, 1.0):
        cached = visor.generate(batch, 5, eos, threshold=tau)
        assert cached.token_ids == visor.generate(batch, 5, eos, threshold=tau, use_cache=False).token_ids
        # the routing token cannot change the answer: each row equals its configuration run alone
        for row in (0, 3):
            alone = visor.generate(batch, 5, eos, active=cached.configurations[row])
            assert alone.token_ids[row] == cached.token_ids[row]


def test_policy_compute_monotone_in_threshold(host):
    loaded, examples = host
    batch = spliced(loaded, examples)
    visor = VisorModel(loaded.model, VisorConfig(n_layers=6))
    visor.set_viable(visor.config.family())
    shape = LLMShape.from_config(loaded.model.config.text_config)
    flops = [visor_prefill_flops(shape, visor.config, a, 150, 12).total for a in visor.viable]
    probabilities = torch.cat([visor.router_probabilities(batch), torch.rand(64, len(visor.viable),
                                                                             generator=torch.Generator().manual_seed(0))])
    from visor_model.methods.visor.policy import expected_compute

    compute = [expected_compute(visor, probabilities, flops, tau) for tau in torch.linspace(0, 1, 21).tolist()]
    assert compute == sorted(compute)
    assert choose_configuration(torch.tensor([[0.2, 0.9, 0.1]]), 0.95) == [2]
    assert choose_configuration(torch.tensor([[0.2, 0.9, 0.1]]), 0.5) == [1]


def test_new_modules_are_seeded_and_leave_the_global_rng_alone(host):
    loaded, _ = host
    torch.manual_seed(123)
    global_state = torch.random.get_rng_state()
    a = VisorModel(loaded.model, VisorConfig(n_layers=6, seed=5, ca_init="random"), [(), (1, 4)])
    b = VisorModel(loaded.model, VisorConfig(n_layers=6, seed=5, ca_init="random"))
    b.set_viable([(), (1, 4)])
    assert torch.equal(torch.random.get_rng_state(), global_state)  # neither used nor reseeded
    sa, sb = a.visor.state_dict(), b.visor.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    other = VisorModel(loaded.model, VisorConfig(n_layers=6, seed=6, ca_init="random"), [(), (1, 4)]).visor
    assert not torch.equal(other.routing_token, a.visor.routing_token)
    assert not torch.equal(other.cross["0"].q_proj.weight, a.visor.cross["0"].q_proj.weight)
    host_init = VisorModel(loaded.model, VisorConfig(n_layers=6, seed=5)).visor
    host_attention = loaded.model.model.language_model.layers[3].self_attn
    assert torch.equal(host_init.cross["3"].k_proj.weight, host_attention.k_proj.weight)


@pytest.mark.parametrize("order", ["paper", "joint"])
def test_training_resumes_to_same_state(host, tmp_path, order):
    """Interrupted inside stage 1 and again inside stage 2 (after the paper order's viable search), then resumed
    in new processes: the same weights, history and viable configurations as an uninterrupted run."""
    from visor_model.methods.visor.training import UniversalConfig, train_universal
    from visor_model.reference.recipe import EncodedExamples

    loaded, examples = host
    data = EncodedExamples(examples, loaded.tokenizer, loaded.image_processor, loaded.model.config.image_token_id)
    config = UniversalConfig(stage1_steps=2, stage2_steps=2, batch_size=3, save_every=100, log_every=100,
                             warmup_steps=1, order=order, eval_every=0)
    image_token_id = loaded.model.config.image_token_id
    searches = []

    def search_viable():
        searches.append(1)
        return {"viable": [(), (1, 4)], "evaluated": []}

    def fresh():
        tokenizer = build_tokenizer(tasks.vocabulary())
        model, _ = build_reference_model(SIX_LAYER_HOST, tokenizer, seed=0)
        return VisorModel(model, VisorConfig(n_layers=6))

    straight = fresh()
    history = train_universal(straight, data, image_token_id, config, tmp_path / "a",
                              search_viable=search_viable)["history"]
    assert [row[:2] for row in history["loss"]] == [[1, 1], [2, 1], [3, 2], [4, 2]]
    assert straight.viable == ([(), (1, 4)] if order == "paper" else [])
    interrupted = fresh()
    train_universal(interrupted, data, image_token_id, config, tmp_path / "b", stop_after=1,
                    search_viable=search_viable)  # inside stage 1
    assert json.loads((tmp_path / "b" / "state.json").read_text())["step"] == 1
    train_universal(fresh(), data, image_token_id, config, tmp_path / "b", stop_after=2,
                    search_viable=search_viable)  # inside stage 2
    resumed = fresh()  # a new process: everything comes from the saved state
    resumed_history = train_universal(resumed, data, image_token_id, config, tmp_path / "b",
                                      search_viable=search_viable)["history"]
    assert len(searches) == (2 if order == "paper" else 0)  # once per training, never again on resuming
    assert resumed.viable == straight.viable and resumed_history == history
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["visor.cross.0.gate"], fresh().state_dict()["visor.cross.0.gate"])


def test_paper_order_samples_the_largest_then_the_viable_configurations():
    from visor_model.methods.visor.training import UniversalConfig, sample_configuration, stage_pool

    class Host:  # stage_pool reads only the VISOR config and the viable configurations
        config = VisorConfig(n_layers=12)
        viable = [(), (4,), (1, 4, 7, 10)]

    family = Host.config.family()
    assert len(family) == 5 and family[-1] == (1, 4, 7, 10)
    paper, joint = UniversalConfig(order="paper"), UniversalConfig(order="joint")
    assert stage_pool(Host, paper, 1) == [family[-1]]
    assert stage_pool(Host, paper, 2) == Host.viable
    assert stage_pool(Host, joint, 1) == stage_pool(Host, joint, 2) == family
    drawn = {sample_configuration(Host.viable, 0, step) for step in range(60)}
    assert drawn == set(Host.viable)  # uniform over the pool: every viable configuration is drawn
    with pytest.raises(ValueError, match="order must be"):
        UniversalConfig(order="largest")


def test_bad_arguments_raise_clear_errors(host):
    loaded, _ = host
    visor = VisorModel(loaded.model, VisorConfig(n_layers=6))
    visor.set_viable([(), (1, 4)])
    with pytest.raises(ValueError, match=r"available: \[0, 2\]"):
        visor.configuration_for(1)
    assert visor.configuration_for(2) == (1, 4)
    for bad in (-0.1, 1.5, "x", float("nan")):
        with pytest.raises(ValueError, match="threshold"):
            check_fraction(bad, "threshold")
    with pytest.raises(ValueError, match="disjoint"):
        VisorConfig(n_layers=6, ca_layers=(0, 1), sa_candidates=(1, 4))
    with pytest.raises(ValueError, match="not a subset"):
        visor.config.roles((2,))


def test_checkpoint_roundtrip_and_plugin_errors(host, tmp_path):
    from visor_model.methods.visor.modeling import load_visor, save_visor

    loaded, examples = host
    visor = perturbed(VisorModel(loaded.model, VisorConfig(n_layers=6)))
    visor.set_viable([(), (1, 4)])
    save_visor(visor, tmp_path / "ckpt", loaded.tokenizer, loaded.image_processor, {"note": "test"})
    _, again = load_visor(str(tmp_path / "ckpt"))
    assert again.viable == visor.viable
    assert visor.metadata is None
    assert again.metadata == {"visor_config": visor.config.to_dict(), "viable": [[], [1, 4]],
                              "router_output": "sigmoid", "training": {"note": "test"}}
    a, b = visor.visor.state_dict(), again.visor.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    batch = spliced(loaded, examples[:2])
    eos = loaded.tokenizer.eos_token_id
    assert (again.generate(batch, 3, eos, active=(1, 4)).token_ids
            == visor.generate(batch, 3, eos, active=(1, 4)).token_ids)

    from lmms_plugins.visor import VisorLlava

    with pytest.raises(ValueError, match="threshold"):
        VisorLlava(pretrained=str(tmp_path / "ckpt"), threshold="1.5", device="cpu")
    with pytest.raises(ValueError, match="exactly one"):
        VisorLlava(pretrained=str(tmp_path / "ckpt"), device="cpu")
    with pytest.raises(ValueError, match=r"sa_layers=1; available: \[0, 2\]"):
        VisorLlava(pretrained=str(tmp_path / "ckpt"), sa_layers="1", device="cpu")
    plugin = VisorLlava(pretrained=str(tmp_path / "ckpt"), sa_layers="2", device="cpu")
    assert plugin.runner.active == (1, 4)


def test_router_labels_follow_the_reference_and_the_tolerance():
    from visor_model.methods.visor.policy import cheapest_sufficing, sufficient

    scores = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.5, 0.8, 1.0], [1.0, 0.0, 1.0]])  # cheapest first
    largest = scores[:, -1]
    full = torch.tensor([1.0, 1.0, 1.0, 0.0])  # the host at full compute
    assert sufficient(scores, largest).tolist() == [[0, 1, 1], [1, 1, 1], [0, 0, 1], [1, 0, 1]]
    # against the full model, a sample the host answers and no configuration does has no sufficing one
    assert sufficient(scores, full).tolist() == [[0, 1, 1], [0, 0, 0], [0, 0, 1], [1, 1, 1]]
    assert sufficient(scores, largest, tolerance=0.2).tolist()[2] == [0, 1, 1]
    # the cross-entropy target: the cheapest sufficing configuration, the largest where none suffices
    assert cheapest_sufficing(sufficient(scores, full)).tolist() == [1, 2, 2, 0]


def test_a_cross_entropy_router_reads_as_cumulative_sufficiency(host):
    """route() of a CE router is the cumulative softmax: P(c suffices) = P(cheapest sufficing <= c), non-decreasing
    in c and 1 at the largest, so the threshold rule picks the cheapest configuration as for a BCE router."""
    loaded, _ = host
    visor = VisorModel(loaded.model, VisorConfig(n_layers=6))
    visor.set_viable([(), (1,), (1, 4)])
    logits = torch.tensor([[2.0, 0.0, -1.0], [-3.0, 1.0, 0.5]])
    visor.router_logits = lambda state: logits
    visor.router_output = "cumulative_softmax"
    probabilities = visor.route(None)
    assert torch.allclose(probabilities, torch.softmax(logits, -1).cumsum(-1))
    assert torch.all(probabilities[:, 1:] >= probabilities[:, :-1]) and torch.allclose(probabilities[:, -1],
                                                                                         torch.ones(2))
    assert choose_configuration(probabilities, 0.6) == [0, 1]
    visor.router_output = "sigmoid"
    assert torch.allclose(visor.route(None), torch.sigmoid(logits))
    with pytest.raises(ValueError, match="unknown router_output"):
        VisorModel(loaded.model, VisorConfig(n_layers=6), metadata={"router_output": "softmax"})
