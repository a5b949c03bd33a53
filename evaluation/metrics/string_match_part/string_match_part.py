"""RULER's string_match_part as a local `evaluate` metric: per sample, 1 when any reference is found
(case-insensitive substring) in the prediction; the score is the mean over samples."""

import datasets
import evaluate

_DESCRIPTION = "1 when any reference is contained in the prediction (case-insensitive), averaged over samples."
_INPUTS = "predictions: list of str; references: list of lists of str. Returns string_match_part and per-sample scores."


class StringMatchPart(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="RULER (Hsieh et al., 2024)", inputs_description=_INPUTS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Sequence(datasets.Value("string"))}))

    def _compute(self, predictions, references):
        scores = [float(max(r.lower() in p.lower() for r in refs)) for p, refs in zip(predictions, references)]
        return {"string_match_part": sum(scores) / len(scores) if scores else 0.0, "scores": scores}
