"""Problem Statement:
Among all non-empty contiguous stretches of the daily profits `profits`, which stretch has the
largest total, and what is that total?

Input Output Description:
Input:
    profits (list of int): 1 to 19 integers between -20 and 20.
Output:
    return (dict): {"best": int, "start": int, "end": int}, the largest sum and the inclusive
    0-based bounds of the first stretch that reaches it.
"""
import random


def main_solution(profits):
    best, best_start, best_end = profits[0], 0, 0
    running, start = 0, 0
    for index, value in enumerate(profits):
        if running <= 0:
            running, start = value, index
        else:
            running += value
        if running > best:
            best, best_start, best_end = running, start, index
    return {"best": best, "start": best_start, "end": best_end}


def input_generator():
    return {"profits": [random.randint(-20, 20) for _ in range(random.randint(1, 19))]}
