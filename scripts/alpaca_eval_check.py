"""The official AlpacaEval package's reading of a moa run: loads the run's annotations.json and
model_outputs.json with alpaca_eval's own loader and prints alpaca_eval's win-rate metrics as JSON,
for moa's tests to compare with its own results.json.

    python scripts/alpaca_eval_check.py RUN_DIR [DF_GAMED_CSV]

With DF_GAMED_CSV (AlpacaEval's df_gamed.csv, or one laid out like it), also prints the package's
length-controlled win rate (`length_controlled_winrate`), its GLM fitted on that file instead of
the copy it would download from Hugging Face.

Needs `pip install alpaca-eval` (tested with 0.6.6); makes no network calls.
"""

import json
import pathlib
import sys

import alpaca_eval
from alpaca_eval import metrics, utils

run = pathlib.Path(sys.argv[1])
annotations = utils.load_or_convert_to_dataframe(run / "annotations.json")
outputs = utils.load_or_convert_to_dataframe(run / "model_outputs.json")
if len(sys.argv) > 2:
    from alpaca_eval.metrics import glm_winrate

    df_gamed = sys.argv[2]
    # The package downloads df_gamed.csv from the Hub; hand it the local file instead.
    glm_winrate.hf_hub_download = lambda **_: df_gamed
    found = glm_winrate.get_length_controlled_winrate(
        annotations, save_weights_dir=None, is_warn_extreme_changes=False
    )
else:
    found = metrics.get_winrate(annotations)
print(json.dumps({
    "version": alpaca_eval.__version__,
    "annotations": len(annotations),
    "outputs": len(outputs),
    "generators": sorted(set(outputs["generator"])),
    **{key: float(value) for key, value in found.items()},
}))
