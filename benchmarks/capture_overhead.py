"""What routing capture adds to a forward pass: same model, same batch, with and without recording.

    python benchmarks/capture_overhead.py [--hidden 1024] [--layers 8] [--experts 64] [--top-k 8]
                                          [--batch 8] [--seq 512] [--repeats 7]

Builds a randomly initialized OLMoE-style model from a config (no download), runs the same batch
with and without moeplace's router hooks (including moving the captured ids to the host), and
prints the median forward time of each and the overhead. Target: at most 10%.
"""

import argparse
import platform
import statistics
import time

import torch
import transformers as hf

from moeplace.calibrate.capture import RouterRecorder, find_routers


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = hf.OlmoeConfig(
        vocab_size=32000,
        hidden_size=args.hidden,
        intermediate_size=args.hidden // 2,
        num_hidden_layers=args.layers,
        num_attention_heads=16,
        num_key_value_heads=16,
        num_experts=args.experts,
        num_experts_per_tok=args.top_k,
        max_position_embeddings=args.seq,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
    )
    model = hf.AutoModel.from_config(config).eval().to(args.device)
    input_ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), device=args.device)
    mask = torch.ones_like(input_ids)
    recorder = RouterRecorder(find_routers(model))

    def forward(record: bool) -> float:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            if record:
                with recorder:
                    model(input_ids=input_ids, attention_mask=mask, use_cache=False)
                    recorder.take(args.batch, args.seq)
            else:
                model(input_ids=input_ids, attention_mask=mask, use_cache=False)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    forward(False), forward(True)  # warm up
    plain, recorded = [], []
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        plain.append(forward(False))
        recorded.append(forward(True))
    base, capture = statistics.median(plain), statistics.median(recorded)
    tokens = args.batch * args.seq
    threads = torch.get_num_threads()
    print(f"machine: {platform.machine()}, {threads} threads, torch {torch.__version__}, {args.device}")
    print(
        f"model: {args.layers} MoE layers, {args.experts} experts, top-{args.top_k}, hidden {args.hidden}; "
        f"batch {args.batch} x {args.seq} = {tokens} tokens"
    )
    print(f"forward without capture: {base * 1000:8.1f} ms  ({tokens / base:,.0f} tok/s)")
    print(f"forward with capture:    {capture * 1000:8.1f} ms  ({tokens / capture:,.0f} tok/s)")
    print(f"capture overhead: {(capture / base - 1):+.2%} (target <= +10%)")


if __name__ == "__main__":
    main()
