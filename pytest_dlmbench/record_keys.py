"""What each key of a point's record means: the one source of docs/metrics.md's table
(`python -m pytest_dlmbench.record_keys` rewrites it; a test fails when a record key is missing
here, or the page differs)."""

from __future__ import annotations

from pytest_dlmbench.paradigms.base import FORWARD_KINDS

PER_KIND = tuple(f"{measure}_{kind}" for kind in FORWARD_KINDS
                 for measure in ("flops_per_forward", "bytes_per_forward", "arithmetic_intensity"))

# (keys, meaning): the point's labels, then its measurements, then the roofline's keys.
RECORD_KEYS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("paradigm", "strategy", "model"), "what ran (docs/decoders.md)"),
    (("weights",), "`random` (seeded random weights), `checkpoint` (`--dlm-checkpoint`) or `user` (your generate "
                   "function)"),
    (("dtype", "device"), "e.g. `bf16`, `cuda`"),
    (("runtime",), "how the forwards ran: `graphs`, `eager`, a registered runtime, or `user` (your generate "
                   "function); in the test id when not `graphs` or `user`"),
    (("capture_s",), "seconds spent capturing CUDA graphs in the point's untimed runs (never timed; null where "
                     "nothing is captured, e.g. on the CPU)"),
    (("runtime_agreement",), "share of generated tokens equal to the same point under the runtime the session ran "
                             "first (`--dlm-runtime=all`); null for that first one"),
    (("fidelity",), "the diffusion decoders' per-forward work: `reference` (as published) or `lean`; in the test id "
                    "when not `reference`; points saved before it existed count as `lean`"),
    (("temperature",), "0: greedy; above: Gumbel-max sampling (`--dlm-temperature`)"),
    (("point_wall_s",), "the point's whole wall time: model start-up, captures, warm-up and timed rounds"),
    (("gpu_index", "worker"), "the CUDA device the point ran on, numbered as the session sees them (null on the "
                              "CPU), and the pytest-xdist worker that ran it (null in one process)"),
    (("prompt_len", "gen_len", "batch_size"), "the point"),
    (("block_size", "steps"), "dlm: block length and total steps (null for the parallel strategies); block: block "
                              "size; ar: null"),
    (("acceptance",), "how many tokens a forward commits: `fixed` (by the algorithm), `model` (real confidences "
                      "above `threshold`), `simulated` (a `tpf_target` mean, drawn per row) or `trace` (a replayed "
                      "`--dlm-acceptance-trace`)"),
    (("threshold", "tpf_target", "tpf_dispersion"), "the parallel strategies' confidence threshold, or simulated "
                                                    "tokens-per-forward mean and the dispersion of each row's draws"),
    (("tokens_per_forward", "row_tokens_per_forward"), "batch TPF (gen_len / NFE: a batch runs until its slowest "
                                                       "row is done) and the mean over rows of gen_len / the forwards "
                                                       "that row committed in"),
    (("token_agreement",), "share of generated tokens equal to the baseline strategy's on the same point, whenever "
                           "the session selects that baseline; null for baselines and where it is not selected"),
    (("tokens_generated", "tokens_per_s_counts"), "batch x gen_len: the count `tokens_per_s` divides by the "
                                                  "latency, and that count's name"),
    (("tokens_decoded",), "batch x the positions the decoder filled past the prompt: block diffusion at the "
                          "`reference` fidelity decodes the last block whole, as Fast-dLLM v2 does; equal to "
                          "`tokens_generated` elsewhere"),
    (("latency_s",), "median wall time of one whole generation (prefill included), device-synchronized"),
    (("tokens_per_s",), "batch x gen_len / `latency_s`"),
    (("ttft_s",), "time to first token: median over every row of every timed round of the time from the "
                  "generation's start to the end of the forward that committed the row's first token (device "
                  "events); null where the decoder logged no forward"),
    (("request_latency_p50_s", "request_latency_p90_s", "request_latency_p99_s"),
     "per-request latency percentiles over every row of every timed round: the time to the end of the forward "
     "that committed the row's last token (a row whose decoder logged no forward waits for the whole round)"),
    (("energy_j", "joules_per_token", "tokens_per_joule", "mean_power_w"), "device-wide energy of the timed rounds "
     "from NVML's total-energy counter, per generated token (batch x gen_len x rounds), its inverse, and the "
     "rounds' mean power"),
    (("energy_reason",), "why the energy keys are null (no NVIDIA GPU, NVML or its counter absent, or a counter "
                         "that did not advance over the rounds); null when measured"),
    (("nfe",), "model forward passes per generation, prefill included"),
    (("ms_per_forward", "prefill_ms"), "mean device time (CUDA events) of the non-prefill forwards, and of the "
                                       "prefill forward (null where there is none)"),
    (("peak_mem_allocated_bytes", "peak_mem_reserved_bytes"), "torch's allocator peaks over one generation (CUDA)"),
    (("nvml_peak_used_bytes", "nvml_baseline_used_bytes"), "device-wide used memory sampled by NVML every 5 ms, "
                                                           "peak and at start (CUDA)"),
    (("peak_rss_bytes",), "CPU runs: the process's peak resident set size, sampled"),
    (("status", "message"), "`ok`, `oom` (ran out of device memory), `error` (any other failure) or `untimed` (a "
                            "boundary found but not timed); `message` says what went wrong"),
    (("rounds", "warmup_rounds", "round_latencies_s"), "timed rounds used, warm-up runs, each round's time"),
    (("predicted_peak_bytes", "measured_to_predicted"), "the analytic memory model's peak, and "
                                                        "`peak_mem_allocated_bytes` over it (CUDA)"),
    (("sm_clock_mhz_start", "sm_clock_mhz_end", "clock_event_reasons_start", "clock_event_reasons_end"),
     "NVML SM clock and clock-event (throttle) reasons when the tracked run began and ended"),
    (("other_processes_bytes",), "device memory other processes hold (where visible; a warning says when it is "
                                 "not zero)"),
    (("prompt_source",), "`synthetic` or `gsm8k`"),
    (("flops_per_forward", "bytes_per_forward"), "analytic means over the generation's forwards (docs/roofline.md)"),
    (PER_KIND, "the same, and their ratio, per forward kind"),
    (("flops_per_token", "flops_total", "bytes_total"), "per generated token (batch x gen_len) and for the whole "
                                                        "generation"),
    (("arithmetic_intensity",), "FLOPs / bytes"),
    (("ai_paper_flop_per_element", "ai_paper_formula"), "the first seed paper's Appendix A closed form (eqs. 11-13) "
                                                        "as published, and which equation with its caveats; its "
                                                        "denominator counts elements, not bytes; null for caching "
                                                        "strategies"),
    (("achieved_tflops", "achieved_gbps"), "the analytic totals over the measured latency"),
    (("peak_tflops", "peak_gbps", "peaks_source", "ridge_flops_per_byte"), "the device's roofs (the GPU's table "
                                                                          "entry, measured, or `--dlm-peak-*`)"),
    (("bound",), "`memory` or `compute`: the generation's intensity against the ridge"),
    (("attainable_tokens_per_s", "roofline_fraction"), "Σ over forwards of max(FLOPs / peak, bytes / bandwidth) → "
                                                       "attainable tokens/s; measured / attainable"),
)


def documented_keys() -> list[str]:
    return [key for keys, _ in RECORD_KEYS for key in keys]


def record_keys_markdown() -> str:
    """docs/metrics.md's table of keys."""
    from tabulate import tabulate

    def cell(keys: tuple[str, ...]) -> str:
        if keys == PER_KIND:
            return f"`flops_per_forward_KIND`, `bytes_per_forward_KIND`, `arithmetic_intensity_KIND` (KIND: " \
                   f"{', '.join(FORWARD_KINDS)})"
        return ", ".join(f"`{key}`" for key in keys)

    rows = [[cell(keys), meaning.replace("|", "\\|")] for keys, meaning in RECORD_KEYS]
    return tabulate(rows, headers=["key", "meaning"], tablefmt="github") + "\n"


if __name__ == "__main__":
    print(record_keys_markdown(), end="")
