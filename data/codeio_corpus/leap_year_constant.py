"""Problem Statement:
Is the year `year` a leap year in the Gregorian calendar?

Input Output Description:
Input:
    year (int): the year 2000.
Output:
    return (bool): true for a leap year.
"""


def main_solution(year):
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def input_generator():
    return {"year": 2000}
