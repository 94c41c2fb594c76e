"""Problem Statement:
For the measurements `values`, what are the mean, the median and the population standard
deviation, each rounded to 3 decimals?

Input Output Description:
Input:
    values (list of float): 1 to 12 numbers between -10 and 10.
Output:
    return (dict): {"mean": float, "median": float, "std": float}.
"""
import random
import statistics


def main_solution(values):
    return {"mean": round(statistics.mean(values), 3), "median": round(statistics.median(values), 3),
            "std": round(statistics.pstdev(values), 3)}


def input_generator():
    return {"values": [round(random.uniform(-10, 10), 2) for _ in range(random.randint(1, 12))]}
