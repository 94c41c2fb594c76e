"""Problem Statement:
A list of digits xs is transformed step by step: first keep only the even digits; then replace every digit d by 9 - d; then add 5 to every digit and keep the last digit. Which list of digits comes out?

Input Output Description:
Input:
    xs (list of int): 3 to 5 digits, each between 0 and 9.
Output:
    return (list of int): the digits after the last step.
"""
import random


def main_solution(xs):
    ys = [v for v in xs if v % 2 == 0]
    zs = [9 - v for v in ys]
    ws = [(v + 5) % 10 for v in zs]
    return ws


def input_generator():
    return {"xs": [random.randint(0, 9) for _ in range(random.randint(3, 5))]}
