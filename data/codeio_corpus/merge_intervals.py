"""Problem Statement:
Meetings occupy the time intervals in `intervals` ([start, end], inclusive). When overlapping
meetings are merged, which busy periods remain, in order?

Input Output Description:
Input:
    intervals (list of [int, int]): 1 to 8 intervals with 0 <= start <= end <= 30.
Output:
    return (list of [int, int]): the merged intervals sorted by start.
"""
import random


def main_solution(intervals):
    merged = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def input_generator():
    intervals = []
    for _ in range(random.randint(1, 8)):
        start = random.randint(0, 25)
        intervals.append([start, start + random.randint(0, 5)])
    return {"intervals": intervals}
