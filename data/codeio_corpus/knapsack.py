"""Problem Statement:
A thief can carry at most `capacity` kilograms. Item i weighs `weights[i]` kilograms and is worth
`values[i]`. Each item can be taken at most once. What is the largest total value he can carry?

Input Output Description:
Input:
    weights (list of int): 1 to 8 weights, each 1..10.
    values (list of int): as many values as weights, each 1..30.
    capacity (int): 0 <= capacity <= 25.
Output:
    return (int): the best total value.
"""
import random


def main_solution(weights, values, capacity):
    best = [0] * (capacity + 1)
    for weight, value in zip(weights, values):
        for room in range(capacity, weight - 1, -1):
            best[room] = max(best[room], best[room - weight] + value)
    return best[capacity]


def input_generator():
    count = random.randint(1, 8)
    return {"weights": [random.randint(1, 10) for _ in range(count)],
            "values": [random.randint(1, 30) for _ in range(count)],
            "capacity": random.randint(0, 25)}
