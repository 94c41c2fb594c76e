"""Problem Statement:
What is row `row` of Pascal's triangle (row 0 is [1])?

Input Output Description:
Input:
    row (int): 0 <= row <= 15.
Output:
    return (list of int): the binomial coefficients of that row.
"""
import random


def main_solution(row):
    values = [1]
    for _ in range(row):
        values = [1] + [a + b for a, b in zip(values, values[1:])] + [1]
    return values


def input_generator():
    return {"row": random.randint(0, 15)}
