"""alignlab serve as the RL trainer's external rollout engine, driven by H4's client (rollout/remote.py:
generate_remote, push_weights) over loopback: the engine's samples equal in-process generate() with the same
seed, and a weight push changes them to the pushed model's. Skipped where rollout/remote.py is absent."""

import threading

import pytest

from alignlab.rollout.generate import SamplingConfig, generate
from alignlab.serve import ModelServer, make_http_server

remote = pytest.importorskip("alignlab.rollout.remote")


def test_remote_rollouts_equal_in_process_and_follow_pushed_weights(tmp_path):
    import torch

    from alignlab.models.load import load_model, load_tokenizer

    tok = load_tokenizer("tiny-random")
    server = ModelServer(load_model("tiny-random"), tok, model_id="policy")
    httpd = make_http_server(server, "127.0.0.1", 0, quiet=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    engine = remote.RemoteEngine(url=f"http://127.0.0.1:{httpd.server_address[1]}", model="policy")
    prompts = [tok(t).input_ids for t in ("The film was", "I think that this one", "Why")]
    cfg = SamplingConfig(max_new_tokens=10, temperature=0.9, top_p=0.95, seed=7, logprobs=True)
    try:
        for step in range(2):
            model = load_model("tiny-random")
            if step:  # a "trained" policy, pushed as full weights
                gen = torch.Generator().manual_seed(1)
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(0.4 * torch.randn(p.shape, generator=gen))
                model.save_pretrained(tmp_path / "policy")
                assert remote.push_weights(engine, tmp_path / "policy")["status"] == "ok"
            local = generate(model, tok, prompts, cfg, n=3)
            got = remote.generate_remote(engine, tok, prompts, cfg, n=3)
            for a, b in zip(got.samples, local.samples):
                assert (a.prompt_index, a.sample_index) == (b.prompt_index, b.sample_index)
                assert a.completion_ids == b.completion_ids and a.finish_reason == b.finish_reason
                assert a.text == b.text
                assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    finally:
        httpd.shutdown()
        httpd.server_close()
        server.close()
