"""Problem Statement:
A list of digits xs is transformed step by step: first replace every digit d by 9 - d; then add 3 to every digit and keep the last digit. Which list of digits comes out?

Input Output Description:
Input:
    xs (list of int): 3 to 5 digits, each between 0 and 9.
Output:
    return (list of int): the digits after the last step.
"""
import random


def main_solution(xs):
    ys = [9 - v for v in xs]
    zs = [(v + 3) % 10 for v in ys]
    return zs


def input_generator():
    return {"xs": [random.randint(0, 9) for _ in range(random.randint(3, 5))]}
