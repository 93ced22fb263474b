"""Bayes classification of mail, as SpamAssassin's BAYES_xx rules do it.

tokenizer  message -> tokens (headers by field, body words, URIs, HTML tags, MIME types)
model      hashed token presence learned with scikit-learn, chi-square combining, .npz storage
bands      BAYES_00..BAYES_999 bands and SpamAssassin's default scores
check      BayesClassifier: symbols for the content pipeline, reloads, auto-learning
learn      ``filterd learn --spam PATH... --ham PATH...`` (files, mbox, Maildir, directories)
"""
