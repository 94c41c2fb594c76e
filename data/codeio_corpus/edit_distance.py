"""Problem Statement:
How many single-character insertions, deletions or substitutions are needed at least to turn the
word `source` into the word `target`?

Input Output Description:
Input:
    source (str): a lowercase word of at most 10 letters.
    target (str): a lowercase word of at most 10 letters.
Output:
    return (int): the Levenshtein distance.
"""
import random


def main_solution(source, target):
    previous = list(range(len(target) + 1))
    for i, a in enumerate(source, 1):
        current = [i]
        for j, b in enumerate(target, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a != b)))
        previous = current
    return previous[-1]


def input_generator():
    words = ["kitten", "sitting", "flaw", "lawn", "intention", "execution", "sunday", "saturday", "cat", "cut"]
    return {"source": random.choice(words), "target": random.choice(words)}
