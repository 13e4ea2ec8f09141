"""vLLM side of bench/gen_vs_hf.py, run by the Python of a separate virtual environment holding vLLM
(`--vllm-python PATH` there; vLLM pins its own torch and transformers, so it cannot share alignlab's venv).

Reads one JSON job from argv[1] (model dir, prompt token ids, n, max_new_tokens, seeds, dtype), samples the
same batch as the other sides (temperature 1, top-p 1, no top-k, token-id prompts, n per prompt), and
prints one JSON line: tokens per round (up to and including EOS, as vLLM's token_ids hold them) and wall
seconds per round. Wall clock only: vLLM runs its engine in a child process, which a process CPU clock
would not see. The `__main__` guard is required: vLLM spawns that process by re-importing this file.
"""

import json
import sys
import time

MARK = "alignlab-vllm-peer-result: "


def main() -> None:
    job = json.loads(sys.argv[1])
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=job["model"], dtype=job.get("dtype", "bfloat16"), seed=0, enforce_eager=False,
              max_model_len=job.get("max_model_len", 2048))
    prompts = [TokensPrompt(prompt_token_ids=p) for p in job["prompts"]]

    def run(seed: int, max_new: int) -> tuple[int, float]:
        params = SamplingParams(n=job["n"], temperature=1.0, top_p=1.0, top_k=-1, max_tokens=max_new, seed=seed)
        t = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        wall = time.perf_counter() - t
        return sum(len(c.token_ids) for o in outs for c in o.outputs), wall

    run(0, 4)  # warm-up: graph capture / first-call costs
    rounds = [run(1000 + r, job["max_new_tokens"]) for r in range(job["rounds"])]
    # vLLM logs to stdout too: the result line carries a marker the caller looks for
    print(MARK + json.dumps({"tokens": [t for t, _ in rounds], "wall": [w for _, w in rounds]}), flush=True)


if __name__ == "__main__":
    main()
