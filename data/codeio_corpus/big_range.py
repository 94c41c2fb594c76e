"""Problem Statement:
Which integers lie between 0 (inclusive) and `stop` (exclusive)?

Input Output Description:
Input:
    stop (int): 20 <= stop <= 40.
Output:
    return (list of int): the integers 0..stop-1.
"""
import random


def main_solution(stop):
    return list(range(stop))


def input_generator():
    return {"stop": random.randint(20, 40)}
