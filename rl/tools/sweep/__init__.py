"""Ablation sweeps: grid or random search over dotted config keys, or a list of named arms, x seeds; every run is
a `python -m rl.train`.

    python -m rl.tools.sweep --config configs/sweeps/algorithms.yaml           # runs one after another, on this machine
    python -m rl.tools.sweep --config configs/sweeps/algorithms.yaml --address http://127.0.0.1:8265 --max-concurrent 2
                                                                               # every run a Ray job on that cluster
    python -m rl.tools.sweep --config configs/sweeps/algorithms.yaml --dry-run # validate, print the runs, run nothing

An *arm* is one assignment of the swept params (or, with `mode: list`, one named entry of `arms`, each setting
whichever keys it needs: checks_only, rm_only, gated, ...); a *run* is an arm with one seed. Every run's final
config is loaded and validated with rl.config.load_config before anything starts. Re-running a sweep skips finished runs
and retries failed ones (continuing from their last checkpoint). A failed run is reported, never fatal.

    <sweep_dir>/
      sweep.json             the expanded plan: arms, their params, every run's overrides
      <arm>/seed<k>/         the run's run_dir (rl/run_dir.py), plus done.json once the run finished
      <arm>/seed<k>.log      stdout + stderr of the run, every attempt appended
      results.csv            one row per run: status, params, the last step's metrics (+ the log tail if it failed)
      results.md             per arm: mean +- std over seeds of the sweep's `metrics`
      plots/<arm>.png        learning curves of that arm: every seed, and the mean with a +-std band
      plots/compare.png      all arms' mean curves, one panel per metric

The sweep file (configs/sweeps/*.yaml) is validated like a config: an unknown key, a wrong type or a bad value
fails with file:line.
"""
