"""RULER's string_match_all as a local `evaluate` metric: per sample, the share of references found
(case-insensitive substring) in the prediction; the score is the mean over samples."""

import datasets
import evaluate

_DESCRIPTION = "Share of the references contained in the prediction (case-insensitive), averaged over samples."
_INPUTS = "predictions: list of str; references: list of lists of str. Returns string_match_all and per-sample scores."


class StringMatchAll(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="RULER (Hsieh et al., 2024)", inputs_description=_INPUTS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Sequence(datasets.Value("string"))}))

    def _compute(self, predictions, references):
        scores = [sum(r.lower() in p.lower() for r in refs) / len(refs) for p, refs in zip(predictions, references)]
        return {"string_match_all": sum(scores) / len(scores) if scores else 0.0, "scores": scores}
