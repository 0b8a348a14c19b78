"""The prompt and decode path against transformers' own pipeline, on checkpoints in the llava-hf layout.

The yardstick: `llava_full` (VisionLanguageRunner with FullTokens) gives the same greedy token ids as the
checkpoint's processor with its chat template (chat_template.json, list content) followed by
`model.generate(do_sample=False)`, for both families (OneVision: SigLIP + Qwen2, a tokenizer without BOS;
NeXT: CLIP + Llama, a tokenizer that adds BOS), on its own, in a batch, with eos and with stop strings.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import noise_images
from llava_hf_layout import hf_processor, write_llava_hf_checkpoint

from visor_model.llava.checkpoints import load_checkpoint, read_processor_chat_template
from visor_model.llava.generation import StoppingCriteria, greedy_generate, trim_at_stop
from visor_model.llava.runner import VisionLanguageRunner, eos_token_ids, prompt_ids, prompt_text
from visor_model.methods.base import FullTokens
from visor_model.methods.visor.modeling import VisorConfig, VisorModel

FAMILIES = ("llava_onevision", "llava_next")
QUESTIONS = ["What is the title of the document?\nAnswer the question using a single word or phrase.",
             "Is there a dog in the image? Please answer yes or no."]
LIMIT = 10


@pytest.fixture(scope="module", params=FAMILIES)
def hub_layout(request, tmp_path_factory):
    """(family, folder, LoadedCheckpoint, transformers processor) of a llava-hf layout checkpoint."""
    folder = write_llava_hf_checkpoint(request.param, tmp_path_factory.mktemp(request.param) / "ckpt")
    return SimpleNamespace(family=request.param, folder=folder, loaded=load_checkpoint(str(folder)),
                           processor=hf_processor(request.param, folder))


def images():
    return noise_images([(60, 80), (90, 40)], seed=1)


def hf_inputs(processor, image, question):
    conversation = [{"role": "user", "content": [{"type": "image", "image": image},
                                                 {"type": "text", "text": question}]}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True,
                                         return_tensors="pt")


@torch.no_grad()
def hf_generate(hub, image, question, max_new_tokens=LIMIT, stop_strings=None) -> list[int]:
    inputs = hf_inputs(hub.processor, image, question)
    extra = {} if stop_strings is None else {"stop_strings": stop_strings, "tokenizer": hub.processor.tokenizer}
    out = hub.loaded.model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, **extra)
    ids = out[0, inputs["input_ids"].shape[1]:].tolist()
    return [t for t in ids if t not in eos_token_ids(hub.loaded.tokenizer, hub.loaded.model)]  # ours exclude eos


def runner_ids(runner, images, questions, limits, until=None):
    """The runner's own steps (as `VisionLanguageRunner.generate`), keeping the token ids."""
    pixel_values, image_sizes = runner.process_images(images)
    tokenizer, image_token_id = runner.loaded.tokenizer, runner.model.config.image_token_id
    prompts = [prompt_ids(tokenizer, image_token_id, q) for q in questions]
    _, kept = runner.visual_tokens(pixel_values, image_sizes, [str(i) for i in range(len(images))])
    return runner.decode(runner.splice(prompts, kept), limits, until or [[] for _ in images])


def pick_stop(decode, ids: list[int]) -> str:
    """A stop string the answer `ids` completes within its first five tokens: the text of two of them (a window
    whose text also appears in the whole answer's text, which partial UTF-8 bytes can prevent)."""
    text = decode(ids)
    for start in range(1, 4):
        stop = decode(ids[start : start + 2])
        if stop.strip() and stop in text:
            return stop
    raise AssertionError(f"no stop string found in {ids}")


def test_chat_template_is_read_like_the_processor_reads_it(hub_layout):
    tokenizer_config = json.loads((hub_layout.folder / "tokenizer_config.json").read_text())
    assert "chat_template" not in tokenizer_config
    assert hub_layout.loaded.tokenizer.chat_template == hub_layout.processor.chat_template
    assert hub_layout.processor.chat_template == json.loads(
        (hub_layout.folder / "chat_template.json").read_text())["chat_template"]


def test_processor_template_precedence_is_transformers(tmp_path):
    """processor_config.json's key, then chat_template.json, then chat_template.jinja (ProcessorMixin order)."""
    assert read_processor_chat_template(tmp_path) is None
    (tmp_path / "chat_template.jinja").write_text("jinja")
    assert read_processor_chat_template(tmp_path) == "jinja"
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "json"}))
    assert read_processor_chat_template(tmp_path) == "json"
    (tmp_path / "processor_config.json").write_text(json.dumps({"image_token": "<image>"}))
    assert read_processor_chat_template(tmp_path) == "json"
    (tmp_path / "processor_config.json").write_text(json.dumps({"chat_template": "processor"}))
    assert read_processor_chat_template(tmp_path) == "processor"


def test_prompt_equals_the_processors(hub_layout):
    """Same text (list content rendered: image and question), same ids with the processor's run of image tokens
    collapsed to the one placeholder the runner splices; BOS exactly once for the Llama-style tokenizer."""
    loaded, image_token_id = hub_layout.loaded, hub_layout.loaded.model.config.image_token_id
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONS[0]}]}]
    text = hub_layout.processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert prompt_text(loaded.tokenizer, image_token_id, QUESTIONS[0]) == text
    assert "<image>" in text and QUESTIONS[0] in text
    hf_ids = hf_inputs(hub_layout.processor, images()[0], QUESTIONS[0])["input_ids"][0].tolist()
    collapsed = [t for i, t in enumerate(hf_ids) if t != image_token_id or hf_ids[i - 1] != image_token_id]
    ids = prompt_ids(loaded.tokenizer, image_token_id, QUESTIONS[0])
    assert ids == collapsed and ids.count(image_token_id) == 1
    bos = loaded.tokenizer.bos_token_id
    if hub_layout.family == "llava_next":
        assert ids[0] == bos and ids.count(bos) == 1
    else:
        assert bos is None


def test_bos_as_the_tokenizer_defines_it(hub_layout):
    """Llama-style: BOS once, also when the template writes it itself; Qwen2-style: no token is added."""
    tokenizer, image_token_id = hub_layout.loaded.tokenizer, hub_layout.loaded.model.config.image_token_id
    text = prompt_text(tokenizer, image_token_id, QUESTIONS[0])
    without_special = tokenizer(text, add_special_tokens=False).input_ids
    if tokenizer.bos_token is None:
        assert prompt_ids(tokenizer, image_token_id, QUESTIONS[0]) == without_special
        return
    assert prompt_ids(tokenizer, image_token_id, QUESTIONS[0]) == [tokenizer.bos_token_id] + without_special
    original = tokenizer.chat_template
    try:
        tokenizer.chat_template = "{{ bos_token }}" + original
        ids = prompt_ids(tokenizer, image_token_id, QUESTIONS[0])
    finally:
        tokenizer.chat_template = original
    assert ids == tokenizer(tokenizer.bos_token + text, add_special_tokens=False).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1


def test_greedy_answers_equal_transformers_generate(hub_layout):
    runner = VisionLanguageRunner(hub_layout.loaded, FullTokens())
    batch_images, tokenizer = images(), hub_layout.loaded.tokenizer
    expected = [hf_generate(hub_layout, image, q) for image, q in zip(batch_images, QUESTIONS)]
    assert all(len(ids) == LIMIT for ids in expected)  # random weights: no eos within the limit
    for i, (image, question) in enumerate(zip(batch_images, QUESTIONS)):
        assert runner_ids(runner, [image], [question], [LIMIT]).token_ids == [expected[i]]
        record = runner.generate([image], [question], ["k"], [LIMIT])[0]
        assert record.answer == tokenizer.decode(expected[i], skip_special_tokens=True).strip()
        assert (record.generated_tokens, record.finish_reason) == (LIMIT, "length")
    # batched (left padding) rows stop independently, each at its own limit
    batched = runner_ids(runner, batch_images, QUESTIONS, [4, LIMIT])
    assert batched.token_ids == [expected[0][:4], expected[1]]
    assert batched.finish_reasons == ["length", "length"]


def test_eos_stops_like_generate(hub_layout):
    """An eos id of the generation config (here: the third token the model produces) ends the answer as it
    ends transformers' generate; the eos token is not part of the answer."""
    loaded, image = hub_layout.loaded, images()[0]
    free = hf_generate(hub_layout, image, QUESTIONS[0])
    stop_token = free[2]
    config = loaded.model.generation_config
    original = config.eos_token_id
    config.eos_token_id = [original, stop_token]
    try:
        expected = hf_generate(hub_layout, image, QUESTIONS[0])
        out = runner_ids(VisionLanguageRunner(loaded, FullTokens()), [image], [QUESTIONS[0]], [LIMIT])
    finally:
        config.eos_token_id = original
    assert expected == free[: free.index(stop_token)]
    assert out.token_ids == [expected] and out.finish_reasons == ["eos"]


def test_stop_strings_stop_generation_like_generate(hub_layout):
    """`until`: decoding stops at the token that completes a stop string (as generate's stop_strings), the
    answer ends before it, and only the tokens produced are counted."""
    loaded, tokenizer = hub_layout.loaded, hub_layout.loaded.tokenizer
    runner = VisionLanguageRunner(loaded, FullTokens())
    batch_images = images()
    free = [hf_generate(hub_layout, image, q) for image, q in zip(batch_images, QUESTIONS)]
    full_text = tokenizer.decode(free[0], skip_special_tokens=True)
    stop = pick_stop(runner.decode_text, free[0])
    expected = hf_generate(hub_layout, batch_images[0], QUESTIONS[0], stop_strings=[stop])
    assert 1 <= len(expected) <= 5
    out = runner_ids(runner, [batch_images[0]], [QUESTIONS[0]], [LIMIT], [[stop]])
    assert out.token_ids == [expected] and out.finish_reasons == ["stop"]
    record = runner.generate([batch_images[0]], [QUESTIONS[0]], ["k"], [LIMIT], [[stop, "never-there"]])[0]
    assert record.answer == trim_at_stop(full_text, [stop]).strip() and stop not in record.answer
    assert (record.generated_tokens, record.finish_reason) == (len(expected), "stop")
    # in a batch, the row with the stop string stops; the other runs to its limit, and no step runs after both
    calls = []
    hook = loaded.model.model.language_model.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        batched = runner_ids(runner, batch_images, QUESTIONS, [LIMIT, 6], [[stop], []])
    finally:
        hook.remove()
    assert batched.token_ids == [expected, free[1][:6]] and batched.finish_reasons == ["stop", "length"]
    assert len(calls) == 1 + max(len(expected), 6) - 1  # the prefill, then one step per token after the first


def test_trim_at_stop_cuts_at_the_earliest_stop_string():
    assert trim_at_stop("yes\n\nno ASSISTANT: x", ["ASSISTANT:", "\n\n"]) == "yes"
    assert trim_at_stop("yes", ["", "\n"]) == "yes"


def test_stopping_criteria_checks_its_arguments():
    with pytest.raises(ValueError, match=r"one positive limit or one per row \(2\)"):
        StoppingCriteria.for_batch(2, [3], None)
    with pytest.raises(ValueError, match="stop strings need decode"):
        StoppingCriteria.for_batch(1, 3, None, [["\n"]])
    criteria = StoppingCriteria.for_batch(3, [1, 2, 3], [5, 7], [["a"], [], ["c"]], decode=str)
    assert criteria.eos_token_ids == frozenset({5, 7})
    assert criteria.select([2, 0]) == StoppingCriteria((3, 1), frozenset({5, 7}), (("c",), ("a",)), str)


def test_visor_generate_stops_rows_on_their_stop_strings(hub_layout):
    """VISOR's own decoding (cached and uncached) takes the same criteria: a row stops at its stop string, the
    others run to their limits, and each row's ids are a prefix of its unconstrained answer."""
    loaded = hub_layout.loaded
    runner = VisionLanguageRunner(loaded, FullTokens())
    pixel_values, image_sizes = runner.process_images(images())
    prompts = [prompt_ids(loaded.tokenizer, loaded.model.config.image_token_id, q) for q in QUESTIONS]
    _, kept = runner.visual_tokens(pixel_values, image_sizes, ["0", "1"])
    batch = runner.splice(prompts, kept)
    visor = VisorModel(loaded.model, VisorConfig(n_layers=loaded.model.config.text_config.num_hidden_layers))
    eos = eos_token_ids(loaded.tokenizer, loaded.model)
    free = visor.generate(batch, LIMIT, eos)
    stop = pick_stop(runner.decode_text, free.token_ids[0])
    for use_cache in (True, False):
        out = visor.generate(batch, [LIMIT, 5], eos, use_cache=use_cache, stop_strings=[[stop], []],
                             decode=runner.decode_text)
        assert out.finish_reasons == ["stop", "length"]
        assert 1 <= len(out.token_ids[0]) <= 5 and out.token_ids[0] == free.token_ids[0][: len(out.token_ids[0])]
        assert stop in runner.decode_text(out.token_ids[0])
        assert out.token_ids[1] == free.token_ids[1][:5]


def test_greedy_generate_keeps_its_plain_signature(hub_layout):
    """Latency and speed benches call greedy_generate(model, batch, n, None): every row runs n tokens."""
    loaded = hub_layout.loaded
    runner = VisionLanguageRunner(loaded, FullTokens())
    pixel_values, image_sizes = runner.process_images(images()[:1])
    _, kept = runner.visual_tokens(pixel_values, image_sizes, ["0"])
    batch = runner.splice([prompt_ids(loaded.tokenizer, loaded.model.config.image_token_id, QUESTIONS[0])], kept)
    out = greedy_generate(loaded.model, batch, 3, None)
    assert [len(ids) for ids in out.token_ids] == [3] and out.finish_reasons == ["length"]


def plugin_requests(images, contexts, gen_kwargs):
    docs = [{"i": i} for i in range(len(images))]
    requests = [SimpleNamespace(args=(context, kwargs, lambda doc: [images[doc["i"]]], i, "t", "val"))
                for i, (context, kwargs) in enumerate(zip(contexts, gen_kwargs))]
    return {"t": {"val": docs}}, requests


def test_llava_full_plugin_counts_only_the_tokens_it_generated(hub_layout):
    """The lmms-eval plugin: a stop string in `until` ends the answer and its FLOP record; the per-sample
    log's output_tokens and decode FLOPs are those of the tokens produced."""
    from lmms_plugins.models import LlavaFull
    from visor_model.efficiency.accounting import SampleTokens

    plugin = LlavaFull(pretrained=str(hub_layout.folder), device="cpu", batch_size=2)
    batch_images = images()
    free = hf_generate(hub_layout, batch_images[0], QUESTIONS[0])
    stop = pick_stop(plugin.runner.decode_text, free)
    expected = hf_generate(hub_layout, batch_images[0], QUESTIONS[0], stop_strings=[stop])
    plugin.task_dict, requests = plugin_requests(batch_images, QUESTIONS, [
        {"until": [stop], "max_new_tokens": LIMIT, "do_sample": False},
        {"until": stop + "-not-generated", "max_new_tokens": 4}])
    results = plugin.generate_until(requests)
    counts = [result.token_counts.to_dict() for result in results]
    assert [c["output_tokens"] for c in counts] == [len(expected), 4]
    assert counts[0]["finish_reason"] == "stop" and counts[1]["finish_reason"] in ("eos", "length")
    decoded = plugin.runner.decode_text(expected)
    assert results[0].text == trim_at_stop(decoded, [stop]).strip()
    single = plugin.runner.generate([batch_images[0]], [QUESTIONS[0]], ["k"], [LIMIT], [[stop]])[0]
    assert single.finish_reason == "stop"
    logged = plugin.accountant.record(SampleTokens.from_record(single, LIMIT))
    assert logged["flops_llm_decode"] == counts[0]["flops_llm_decode"]
    assert SampleTokens.from_record(single, LIMIT).produced == len(expected)


def test_plugin_default_max_new_tokens_is_lmms_evals(hub_layout, monkeypatch):
    """A task without max_new_tokens (textvqa_val) gets 1024, what lmms-eval 0.7.3's LLaVA models use."""
    from lmms_plugins.models import DEFAULT_MAX_NEW_TOKENS, LlavaFull

    plugin = LlavaFull(pretrained=str(hub_layout.folder), device="cpu", batch_size=2)
    seen = []

    class Captured(Exception):
        """Not an input error, so the plugin does not retry sample by sample."""

    def capture(images, questions, keys, max_new_tokens, until):
        seen.append((list(max_new_tokens), until))
        raise Captured

    monkeypatch.setattr(plugin.runner, "generate", capture)
    plugin.task_dict, requests = plugin_requests(images(), QUESTIONS, [{"until": ["ASSISTANT:"]}, {"until": "\n\n"}])
    with pytest.raises(Captured):
        plugin.generate_until(requests)
    assert DEFAULT_MAX_NEW_TOKENS == 1024
    assert sorted(map(tuple, seen[0][1])) == [("\n\n",), ("ASSISTANT:",)] and seen[0][0] == [1024, 1024]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_stock_cli_answers_every_sample_of_a_llava_hf_checkpoint(family, task_dir, tmp_path):
    """The stock lmms-eval CLI (`python -m lmms_eval --model llava_full`) on a checkpoint in the llava-hf layout
    (chat_template.json, processor configs, sharded weights): every sample answered, none skipped or failed."""
    from test_plugin import stock_cli

    from lmms_plugins.run import check_outputs

    folder = write_llava_hf_checkpoint(family, tmp_path / "ckpt")
    out, log = tmp_path / "out", tmp_path / "lmms.log"
    assert stock_cli("llava_full", {"pretrained": folder, "device": "cpu"}, task_dir, out, log) == 0, log.read_text()
    run = check_outputs(out, "synth_marker", log, 8, max_empty_fraction=0)
    counts = [(sample.get("token_counts") or [None])[0] or {} for sample in run.samples]
    assert len(counts) == 8
    assert all(c.get("output_tokens") is not None and "skipped_reason" not in c for c in counts), counts
