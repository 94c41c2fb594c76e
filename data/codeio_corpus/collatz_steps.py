"""Problem Statement:
Starting from `start`, a number is halved when even and replaced by 3x+1 when odd. How many steps
does it take to reach 1, and what is the largest number met on the way?

Input Output Description:
Input:
    start (int): 1 <= start <= 100000.
Output:
    return (dict): {"steps": int, "peak": int}.
"""
import random


def main_solution(start):
    steps, peak = 0, start
    while start != 1:
        start = start // 2 if start % 2 == 0 else 3 * start + 1
        peak = max(peak, start)
        steps += 1
    return {"steps": steps, "peak": peak}


def input_generator():
    return {"start": random.randint(1, 100000)}
