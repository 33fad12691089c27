"""The practitioner's baseline for text: TF-IDF features and logistic regression (scikit-learn),
trained on exactly the labeled rows the transfer model trained on, scored on the same test set."""

from __future__ import annotations

import numpy as np
import torch

from adaptflow.metrics import classification_report


def tfidf_report(train_texts: list[str], train_labels: list[int], test_texts: list[str], test_labels: torch.Tensor,
                 classes: tuple[str, ...], seed: int = 0) -> dict:
    """A classification report (accuracy, macro-F1, confusion matrix) of TF-IDF (word 1-2 grams, sublinear
    term frequency) + logistic regression; classes absent from the training rows get probability 0."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, strip_accents="unicode")
    features = vectorizer.fit_transform(train_texts)
    probs = np.zeros((len(test_texts), len(classes)))
    seen = sorted(set(train_labels))
    if len(seen) == 1:
        probs[:, seen[0]] = 1.0
    else:
        clf = LogisticRegression(max_iter=2000, C=10.0, random_state=seed).fit(features, train_labels)
        probs[:, clf.classes_] = clf.predict_proba(vectorizer.transform(test_texts))
    logits = torch.from_numpy(np.log(np.clip(probs, 1e-12, 1.0))).float()
    return classification_report(test_labels, logits, classes)
