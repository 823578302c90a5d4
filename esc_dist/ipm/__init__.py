"""Inferential Preference Mining (IPM): sampling, judging and the IPM-PrefDial dataset."""
