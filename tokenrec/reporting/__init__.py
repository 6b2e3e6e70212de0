"""What people read: the nightly HTML report, analyst SQL, and `tokenrec show`."""
