"""Issue commits as patch mails, and back: detect, diff, series and staging in; format out."""
