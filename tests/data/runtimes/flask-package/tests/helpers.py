from flask import Flask

app = Flask("throwaway")
