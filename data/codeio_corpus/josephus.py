"""Problem Statement:
`n` people stand in a circle, numbered 0 to n-1. Counting starts at person 0 and every `m`-th person
is removed until one remains. Which position survives?

Input Output Description:
Input:
    n (int): the number of people, 1 <= n <= 500.
    m (int): the step of the count, 1 <= m <= 20.
Output:
    return (int): the 0-based position of the survivor.
"""
import random


def main_solution(n, m):
    last = 0
    for size in range(2, n + 1):
        last = (last + m) % size
    return last


def input_generator():
    return {"n": random.randint(1, 500), "m": random.randint(1, 20)}
