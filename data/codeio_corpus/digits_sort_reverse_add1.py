"""Problem Statement:
A list of digits xs is transformed step by step: first sort the digits in ascending order; then reverse the order of the digits; then add 1 to every digit and keep the last digit. Which list of digits comes out?

Input Output Description:
Input:
    xs (list of int): 3 to 5 digits, each between 0 and 9.
Output:
    return (list of int): the digits after the last step.
"""
import random


def main_solution(xs):
    ys = sorted(xs)
    zs = ys[::-1]
    ws = [(v + 1) % 10 for v in zs]
    return ws


def input_generator():
    return {"xs": [random.randint(0, 9) for _ in range(random.randint(3, 5))]}
