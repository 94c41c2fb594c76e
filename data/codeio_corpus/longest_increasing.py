"""Problem Statement:
What is the length of the longest strictly increasing subsequence of the sequence `sequence`?

Input Output Description:
Input:
    sequence (list of int): 1 to 19 integers between 0 and 50.
Output:
    return (int): the length of the longest strictly increasing subsequence.
"""
import bisect
import random


def main_solution(sequence):
    tails = []
    for number in sequence:
        position = bisect.bisect_left(tails, number)
        tails[position:position + 1] = [number]
    return len(tails)


def input_generator():
    return {"sequence": [random.randint(0, 50) for _ in range(random.randint(1, 19))]}
