"""Problem Statement:
How is the integer `number` written in Roman numerals?

Input Output Description:
Input:
    number (int): 1 <= number <= 3999.
Output:
    return (str): the Roman numeral, e.g. "MCMXCIV" for 1994.
"""
import random


def main_solution(number):
    table = [(1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"),
             (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]
    letters = ""
    for value, symbol in table:
        while number >= value:
            letters += symbol
            number -= value
    return letters


def input_generator():
    return {"number": random.randint(1, 3999)}
