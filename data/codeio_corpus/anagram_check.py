"""Problem Statement:
Ignoring spaces and letter case, are the phrases `first` and `second` anagrams of each other?

Input Output Description:
Input:
    first (str): a phrase of at most 20 characters.
    second (str): a phrase of at most 20 characters.
Output:
    return (bool): true when they are anagrams.
"""
import random


def main_solution(first, second):
    clean = lambda text: sorted(text.replace(" ", "").lower())
    return clean(first) == clean(second)


def input_generator():
    phrases = ["listen", "Silent", "enlist", "dormitory", "dirty room", "the eyes", "they see", "apple"]
    return {"first": random.choice(phrases), "second": random.choice(phrases)}
