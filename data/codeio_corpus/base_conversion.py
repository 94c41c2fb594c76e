"""Problem Statement:
How is the non-negative integer `number` written in base `base`, using digits 0-9 and then
letters A-Z?

Input Output Description:
Input:
    number (int): 0 <= number <= 10**6.
    base (int): 2 <= base <= 36.
Output:
    return (str): the digits in that base.
"""
import random
import string


def main_solution(number, base):
    digits = string.digits + string.ascii_uppercase
    if number == 0:
        return "0"
    out = ""
    while number:
        number, remainder = divmod(number, base)
        out = digits[remainder] + out
    return out


def input_generator():
    return {"number": random.randint(0, 10 ** 6), "base": random.randint(2, 36)}
