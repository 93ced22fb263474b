"""Front end: the amavis-style after-queue content filter (Postfix ``content_filter``, 10024).

It translates SMTP/LMTP from Postfix into the content pipeline's verdict and the verdict
back into replies and a reinjection through :mod:`filterd.smtp`.
"""
