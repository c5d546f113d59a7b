"""Group sampled answers by meaning (bidirectional entailment, greedy)."""

from __future__ import annotations

from collections.abc import Sequence

from inference.reliability.judges import Judge


def _key(text: str) -> str:
    return " ".join(text.split()).casefold()


def cluster_answers(question: str, answers: Sequence[str], judge: Judge) -> list[int]:
    """Cluster id per answer, ids numbered 0, 1, … in order of first appearance.

    Each answer is compared with the first member of each existing cluster, in
    order, and joins the first one the judge calls equivalent; otherwise it
    starts a new cluster. Answers identical up to case and spacing reuse the
    earlier answer's cluster without asking the judge.
    """
    ids: list[int] = []
    representatives: list[str] = []
    seen: dict[str, int] = {}
    for answer in answers:
        key = _key(answer)
        if key in seen:
            ids.append(seen[key])
            continue
        for cid, rep in enumerate(representatives):
            if judge.equivalent(question, rep, answer):
                break
        else:
            representatives.append(answer)
            cid = len(representatives) - 1
        seen[key] = cid
        ids.append(cid)
    return ids
