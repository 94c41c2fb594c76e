"""Problem Statement:
What is the determinant of the square matrix `matrix`, rounded to 4 decimals?

Input Output Description:
Input:
    matrix (list of list of float): a 2x2 or 3x3 matrix with entries between -5 and 5.
Output:
    return (float): the determinant rounded to 4 decimals.
"""
import random

import numpy as np


def main_solution(matrix):
    return round(float(np.linalg.det(np.array(matrix, dtype=float))), 4)


def input_generator():
    size = random.choice([2, 3])
    return {"matrix": [[round(random.uniform(-5, 5), 1) for _ in range(size)] for _ in range(size)]}
