# %% [markdown]
# # A serial dilution from Python
#
# A notebook-style script (each `# %%` is a cell in Jupyter or VS Code): price the protocol,
# run it, and look at the results by concentration. It needs a lab: LABWRIGHT_URL and
# LABWRIGHT_TOKEN (a scientist's token), and the repository's examples in LABWRIGHT_EXAMPLES.
# CI runs it as a script against a real labd.

# %%
import os
import pathlib

from labwright import Lab

examples = pathlib.Path(os.environ.get("LABWRIGHT_EXAMPLES", "protocols/examples"))
protocol = examples / "serial-dilution.yaml"
lab = Lab()  # LABWRIGHT_URL, LABWRIGHT_TOKEN

# %% What will it take and cost?
quote = lab.quote(protocol)
print(f"{quote.validation.tasks} tasks, about {quote.duration_s / 60:.1f} min, {quote.total:.2f} {quote.currency}")

# %% Run it (a progress bar on stderr while it runs).
run = lab.submit(protocol).wait()
print(run)

# %% The results: one row per well, with the plate map's sample, group and concentration.
df = run.results()
print(df[["well", "sample", "concentration", "concentration_unit", "value", "unit"]].head())

# %% Replicates: the eight rows are eight series; mean, SD and CV per concentration.
stats = df.groupby("concentration")["value"].agg(["mean", "std", "count"]).sort_index(ascending=False)
stats["cv_percent"] = 100 * stats["std"] / stats["mean"]
print(stats.round(4))
assert (stats["count"] == 8).all(), "eight replicates of each concentration"

# %% The plate as it looks (in a notebook, `run` alone shows it as a heatmap).
print(run.plate(0).round(3))
out = os.environ.get("LABWRIGHT_OUT")
if out:
    pathlib.Path(out).write_text(run._repr_html_())
    print(f"heatmap written to {out}")
