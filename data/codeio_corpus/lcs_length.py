"""Problem Statement:
What is the length of the longest common subsequence of the strings `first` and `second`?

Input Output Description:
Input:
    first (str): at most 15 letters from "abcd".
    second (str): at most 15 letters from "abcd".
Output:
    return (int): the length of the longest common subsequence.
"""
import random


def main_solution(first, second):
    rows = [[0] * (len(second) + 1) for _ in range(len(first) + 1)]
    for i, a in enumerate(first):
        for j, b in enumerate(second):
            rows[i + 1][j + 1] = rows[i][j] + 1 if a == b else max(rows[i][j + 1], rows[i + 1][j])
    return rows[-1][-1]


def input_generator():
    make = lambda: "".join(random.choice("abcd") for _ in range(random.randint(0, 15)))
    return {"first": make(), "second": make()}
