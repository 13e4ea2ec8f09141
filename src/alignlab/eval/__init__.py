"""Evaluation measures: win rate with bootstrap intervals (winrate), Bradley-Terry / Elo ratings from
pairwise battles (ratings), KL(policy || reference) from samples and perplexity (kl), plus judges and
reports. Importing the package does no work; import the submodule you need."""
