"""The OSS protocol, without I/O: signing (V1, V4, presigned URLs), CRC-64, the callback
headers, OSS's XML and error answers, the exception tree and the redaction of secrets,
endpoints and names, credentials, typed upload options.

Data in, data out (h11's sans-I/O split): the client, the callback receiver and the emulator
all build on it, and it imports nothing from them. Internal: import the public names from
:mod:`oss_callback`.
"""
